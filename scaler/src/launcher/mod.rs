//! Launchers start and stop gateways for the scaler: [`Launcher`] and its implementations,
//! local `weir gateway` processes ([`LocalLauncher`]), an ECS service's desired count
//! ([`EcsLauncher`]) and a Kubernetes StatefulSet's replicas ([`KubernetesLauncher`]).
//!
//! A launcher only sets and reads a count; the gateways register themselves and a stopping
//! gateway hands its partitions over before it exits (SIGTERM in every case).

use anyhow::Result;
use async_trait::async_trait;

pub mod ecs;
pub mod kubernetes;
pub mod local;

pub use ecs::EcsLauncher;
pub use kubernetes::KubernetesLauncher;
pub use local::LocalLauncher;

/// Starts and stops gateways for the scaler.
#[async_trait]
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// The launcher's name, for logs and status.
    fn name(&self) -> String;
    /// How many gateways this launcher runs (or was asked to run).
    async fn current(&self) -> Result<usize>;
    /// Runs `count` gateways; stopping one lets it hand its partitions over first.
    async fn set(&self, count: usize) -> Result<()>;
}
