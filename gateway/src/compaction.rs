//! The leader's side of object maintenance: which partitions are compacted and retained by
//! this gateway (those it leads), with what settings. The work itself, merging objects,
//! switching index entries and deleting what nothing refers to, is the storage service's
//! ([`weir_storage::maintenance`]); key compaction's record rewriting is
//! [`crate::key_compaction::KafkaRecords`].

use crate::key_compaction::KafkaRecords;
use crate::Gateway;
use std::sync::Arc;
use weir_common::TopicPartition;
pub use weir_storage::maintenance::CompactionConfig;
use weir_storage::maintenance::{Compactor, KeyPolicy, PartitionLog};

impl Gateway {
    /// One compaction pass over every partition this gateway leads; returns how many
    /// segments were switched in.
    pub async fn compact(self: &Arc<Self>) -> usize {
        let compactor = Compactor::new(
            self.storage.clone(),
            self.meta.clone(),
            self.config.compaction.clone(),
            self.config.clock.clone(),
        );
        let cutoff = compactor.cutoff(self.config.clock.now_ms());
        let mut switched = 0;
        for topic in self.registry.all() {
            let settings = topic.settings();
            for p in 0..topic.partition_count() {
                // Each partition is compacted by its leader only.
                let Some(log) = topic.partition(p).filter(|l| l.lock().led) else {
                    continue;
                };
                let tp = TopicPartition {
                    topic_id: topic.id,
                    partition: p,
                };
                let view = {
                    let s = log.lock();
                    PartitionLog {
                        tp,
                        log_start: s.log_start,
                        high_watermark: s.high_watermark,
                    }
                };
                let registry = &self.registry;
                let on_switch = |segment: &weir_common::IndexEntry| registry.compacted(tp, segment);
                let pass = if settings.compact_policy {
                    let policy = KeyPolicy {
                        min_cleanable_dirty_permille: settings.min_cleanable_dirty_permille,
                        min_compaction_lag_ms: settings.min_compaction_lag_ms,
                        delete_retention_ms: settings.delete_retention_ms,
                    };
                    compactor
                        .compact_keys(view, policy, cutoff, &KafkaRecords, &on_switch)
                        .await
                } else {
                    compactor.compact_partition(view, cutoff, &on_switch).await
                };
                match pass {
                    Ok(n) => switched += n,
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, partition = p, error = %e, "compaction failed")
                    }
                }
            }
        }
        switched
    }
}
