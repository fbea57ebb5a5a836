//! Weir's scaler: how many gateways the load needs, which gateway leads which partition,
//! and the loop that carries both out.
//!
//! - [`policy`]: the scaling [`Policy`] and the [`Autoscaler`], which turns measured load
//!   into an [`Action`] (pure: no I/O; time is passed in).
//! - [`placement`]: the rebalancer's plan, [`plan_moves`]: partitions with their loads in,
//!   leadership [`Move`]s out (pure).
//! - [`reconciler`]: the [`Scaler`] control loop. It reads what every gateway heartbeats into
//!   the metadata store (bytes in and out per second, per partition too, and connections),
//!   asks the autoscaler for a decision and a [`Launcher`] for that many gateways, and writes
//!   partition placements that the gateways follow (`weir_metadata_api::membership`). Every decision
//!   is logged with its inputs, counted in metrics and kept in the metadata store as the
//!   [`Status`] that `weir scaler status` shows.
//! - [`launcher`]: the [`Launcher`] trait and the gateways it can start and stop: local
//!   processes ([`LocalLauncher`]), an ECS service ([`EcsLauncher`]) or a Kubernetes
//!   StatefulSet ([`KubernetesLauncher`]).
//!
//! The scaler never serves Kafka requests nor touches record data; it moves leadership only
//! by writing placements, which the gateways carry out. Command-line flags live in the
//! `weir` binary (`src/scaler_cmd.rs`), which converts them into a [`Policy`].

pub mod launcher;
pub mod placement;
pub mod policy;
pub mod reconciler;

pub use launcher::{EcsLauncher, KubernetesLauncher, Launcher, LocalLauncher};
pub use placement::{plan_moves, plan_moves_around, reported_loads, Move, PartitionView};
pub use policy::{Action, Autoscaler, Policy};
pub use reconciler::{
    apply_moves, move_and_wait, moves_done, next_node_id, partition_views, pin_unplaced, Decision,
    Scaler, Status, STATUS_KEY, STATUS_NAMESPACE,
};
