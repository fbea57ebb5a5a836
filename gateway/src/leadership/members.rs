//! This gateway's registration: it registers once (refusing a node id another live
//! gateway holds) and heartbeats its address, rack and load, through the typed membership
//! records of [`weir_metadata_api::membership`].

use super::{Cluster, Load, Member};
use crate::Gateway;
use std::time::{Duration, Instant};
use weir_metadata_api::membership::{self, members};
use weir_metadata_api::{MetadataError, MetadataStore};

impl Cluster {
    pub(super) fn me(&self, load: Load) -> Member {
        Member {
            node_id: self.node_id,
            host: self.host.clone(),
            port: self.port,
            rack: self.config.rack.clone(),
            incarnation: self.incarnation.clone(),
            started_ms: self.started_ms,
            heartbeat_ms: weir_common::now_ms(),
            draining: self.is_draining(),
            load,
        }
    }

    /// Registers this gateway. Another live gateway with the same node id makes this fail
    /// (after waiting out its timeout, in case it is a previous run that was killed).
    pub async fn register(&self, meta: &dyn MetadataStore) -> Result<(), MetadataError> {
        if !self.config.exclusive {
            let deadline = Instant::now() + self.config.member_timeout + Duration::from_secs(1);
            loop {
                // A fresh registration at this gateway's own address is a previous run that
                // was killed: this process holds that port now.
                let other = members(meta).await?.into_iter().find(|m| {
                    m.node_id == self.node_id
                        && m.incarnation != self.incarnation
                        && !(m.host == self.host && m.port == self.port)
                        && m.is_live(weir_common::now_ms(), self.config.member_timeout)
                });
                let Some(other) = other else { break };
                if Instant::now() >= deadline {
                    return Err(MetadataError::Invalid(format!(
                        "node id {} is in use by a live gateway at {}:{}: give each gateway its own --node-id",
                        self.node_id, other.host, other.port
                    )));
                }
                tracing::info!(
                    node_id = self.node_id,
                    "a registration of this node id is still fresh; waiting for it to expire"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        self.heartbeat_with(meta, Load::default()).await
    }

    async fn heartbeat_with(
        &self,
        meta: &dyn MetadataStore,
        load: Load,
    ) -> Result<(), MetadataError> {
        membership::put_member(meta, &self.me(load)).await
    }

    /// Measures the load since the last heartbeat and writes the heartbeat.
    pub async fn heartbeat(&self, gw: &Gateway) -> Result<(), MetadataError> {
        let load = self.measure(gw);
        *self.last_load.lock().unwrap_or_else(|e| e.into_inner()) = load.clone();
        self.heartbeat_with(gw.meta.as_ref(), load).await
    }
}
