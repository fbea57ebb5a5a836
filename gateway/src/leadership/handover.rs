//! Handing partitions over: stop accepting appends, let the appends in flight commit (or
//! time out: the next leader's epoch fences them), then release the partition in the
//! metadata store; on shutdown, every partition at once, then deregister.

use super::Cluster;
use crate::broker::PartitionLog;
use crate::Gateway;
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use weir_metadata_api::NO_LEADER;

impl Cluster {
    /// Hands a partition over: stop appending, let appends in flight commit, release.
    pub(super) fn release(&self, gw: &Arc<Gateway>, log: Arc<PartitionLog>, to: Option<i32>) {
        self.releasing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(log.tp);
        let gw = gw.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            release_partition(&gw, &log, to).await;
            gw.cluster
                .releasing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&log.tp);
            tracing::info!(tp = %log.tp, to = ?to, took_ms = started.elapsed().as_millis() as u64,
                "handed the partition over");
        });
    }

    /// Shutdown: hands every partition over and stops heartbeating, so that other gateways
    /// take over at once instead of after the member timeout.
    pub async fn leave(&self, gw: &Arc<Gateway>) {
        self.draining.store(true, Ordering::SeqCst);
        if let Err(e) = self.heartbeat(gw).await {
            tracing::warn!(error = %e, "could not announce the shutdown");
        }
        let mut handovers = Vec::new();
        for topic in gw.registry.all() {
            for p in 0..topic.partition_count() {
                if let Some(log) = topic.partition(p) {
                    if log.lock().led {
                        let gw = gw.clone();
                        handovers.push(async move { release_partition(&gw, &log, None).await });
                    }
                }
            }
        }
        let count = handovers.len();
        futures::stream::iter(handovers)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        if !self.config.exclusive {
            if let Err(e) =
                weir_metadata_api::membership::delete_member(gw.meta.as_ref(), self.node_id).await
            {
                tracing::warn!(error = %e, "could not deregister");
            }
        }
        tracing::info!(partitions = count, "handed every partition over");
    }
}

async fn release_partition(gw: &Gateway, log: &PartitionLog, to: Option<i32>) {
    let (epoch, generation) = {
        let mut s = log.lock();
        if !s.led {
            return;
        }
        s.led = false;
        s.leader = to.unwrap_or(NO_LEADER);
        (s.leader_epoch, s.generation)
    };
    // Appends already admitted finish (or fail) at this epoch; wait for them.
    let mut changes = gw.registry.subscribe();
    let deadline = tokio::time::Instant::now() + gw.cluster.config.drain_timeout;
    loop {
        {
            let s = log.lock();
            if s.next_offset <= s.high_watermark || s.generation != generation || s.deleted {
                break;
            }
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            tracing::warn!(tp = %log.tp, "appends still in flight at the hand-over; the next leader's epoch fences them");
            break;
        }
    }
    match gw
        .meta
        .release_leadership(log.tp, gw.cluster.node_id, epoch)
        .await
    {
        Ok(_) => {}
        Err(e) => {
            // The next leader takes it after the member timeout instead.
            tracing::warn!(tp = %log.tp, error = %e, "releasing the partition failed")
        }
    }
    let mut s = log.lock();
    if !s.led {
        s.generation += 1;
        log.reset_to_durable(&mut s);
    }
}
