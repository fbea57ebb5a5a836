//! Topics created, deleted, grown or reconfigured through other gateways: each full sync
//! brings the registry in line with the metadata store.
//!
//! The metadata store is read without any lock, so that this gateway's own topic
//! mutations (CreateTopics, DeleteTopics, CreatePartitions, AlterConfigs) never wait for a
//! sync's round trips. What was read is applied under the [`AdminLock`] those mutations
//! hold, and only if none of them finished since the read began: a read older than a local
//! mutation would take a topic created here for one deleted elsewhere, or undo a config
//! change. Such a read is retried, and after [`READ_ATTEMPTS`] the next sync tries again.

use super::Cluster;
use crate::Gateway;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use weir_common::TopicId;
use weir_metadata_api::{MetadataError, PartitionState, TopicRecord};

/// Reads of the topics one sync makes before it leaves them to the next sync.
pub const READ_ATTEMPTS: usize = 3;

/// Serializes this gateway's topic mutations and counts them, so that the cluster sync can
/// tell whether what it read is older than one of them.
#[derive(Debug, Default)]
pub struct AdminLock {
    lock: tokio::sync::Mutex<()>,
    /// Bumped when a mutation's guard is dropped (still holding the lock).
    generation: AtomicU64,
}

/// A held [`AdminLock`].
#[must_use]
#[derive(Debug)]
pub struct AdminGuard<'a> {
    _held: tokio::sync::MutexGuard<'a, ()>,
    /// Bumped on drop: set for mutations, not for the sync's apply.
    generation: Option<&'a AtomicU64>,
}

impl Drop for AdminGuard<'_> {
    fn drop(&mut self) {
        if let Some(generation) = self.generation {
            generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl AdminLock {
    /// Locks for a topic mutation of this gateway (which counts once the guard is dropped).
    pub async fn lock(&self) -> AdminGuard<'_> {
        let held = self.lock.lock().await;
        AdminGuard {
            _held: held,
            generation: Some(&self.generation),
        }
    }

    /// The count of finished mutations; read before reading the metadata store.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Locks to apply a read begun at `generation`; None if a mutation finished since.
    async fn lock_unchanged(&self, generation: u64) -> Option<AdminGuard<'_>> {
        let held = self.lock.lock().await;
        (self.generation() == generation).then_some(AdminGuard {
            _held: held,
            generation: None,
        })
    }
}

/// The topics as read from the metadata store, and the partition states of those that are
/// new to this gateway or grew.
struct TopicsRead {
    records: Vec<TopicRecord>,
    states: HashMap<TopicId, Vec<PartitionState>>,
}

impl Cluster {
    /// Brings the registry's topics in line with the metadata store (topics created,
    /// deleted, grown or reconfigured through another gateway).
    pub(super) async fn refresh_topics(&self, gw: &Arc<Gateway>) -> Result<(), MetadataError> {
        for _ in 0..READ_ATTEMPTS {
            let generation = gw.admin.generation();
            let read = read_topics(gw).await?;
            if let Some(_admin) = gw.admin.lock_unchanged(generation).await {
                apply_topics(gw, read);
                return Ok(());
            }
            tracing::debug!("a topic changed here while the topics were read; reading again");
        }
        tracing::debug!("topics kept changing here; the next sync refreshes them");
        Ok(())
    }
}

/// Reads every topic, and the partition states of the topics the registry lacks or that
/// have more partitions than it holds. No lock is held.
async fn read_topics(gw: &Gateway) -> Result<TopicsRead, MetadataError> {
    let records = gw.meta.list_topics().await?;
    let mut states = HashMap::new();
    for record in &records {
        let needed = gw
            .registry
            .topic_by_id(record.id)
            .is_none_or(|topic| record.partitions > topic.partition_count());
        if needed {
            states.insert(record.id, gw.meta.partition_states(record.id).await?);
        }
    }
    Ok(TopicsRead { records, states })
}

/// Applies a read to the registry; called under the admin lock, with no local mutation
/// since the read began. A topic whose partition states were not read (the registry
/// changed since: only this sync changes it now) is left to the next sync.
fn apply_topics(gw: &Gateway, read: TopicsRead) {
    let TopicsRead {
        records,
        mut states,
    } = read;
    let ids: HashSet<TopicId> = records.iter().map(|r| r.id).collect();
    for topic in gw.registry.all() {
        if !ids.contains(&topic.id) {
            tracing::info!(topic = %topic.name, "topic deleted through another gateway");
            gw.registry.remove_id(topic.id);
        }
    }
    for record in records {
        match gw.registry.topic_by_id(record.id) {
            Some(topic) => {
                let reconfigured = record.configs != topic.record().configs;
                if record.partitions > topic.partition_count() {
                    if let Some(states) = states.remove(&record.id) {
                        gw.registry.add_partitions(&topic, record.clone(), &states);
                    }
                }
                if reconfigured {
                    gw.registry.update_configs(&topic, record);
                }
            }
            None => {
                if let Some(states) = states.remove(&record.id) {
                    if states.len() as i32 >= record.partitions {
                        gw.registry.insert(record, &states);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mutation_since_the_read_invalidates_it() {
        let admin = AdminLock::default();
        let before = admin.generation();
        assert!(admin.lock_unchanged(before).await.is_some());
        // The sync's own apply does not count as a mutation.
        assert_eq!(admin.generation(), before);
        drop(admin.lock().await);
        assert!(admin.lock_unchanged(before).await.is_none());
        let now = admin.generation();
        assert!(admin.lock_unchanged(now).await.is_some());
    }

    #[tokio::test]
    async fn a_mutation_in_progress_at_the_read_invalidates_it() {
        let admin = Arc::new(AdminLock::default());
        let held = admin.lock().await;
        let generation = admin.generation();
        let waiter = {
            let admin = admin.clone();
            tokio::spawn(async move { admin.lock_unchanged(generation).await.is_some() })
        };
        tokio::task::yield_now().await;
        drop(held);
        assert!(!waiter.await.unwrap());
    }
}
