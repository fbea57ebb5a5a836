//! The gateway's shared state: topics and the partitions it leads, with each partition's
//! log tail (next offset, high watermark, log start, idempotent-producer state), plus the
//! [`HighWatermarks`] observer that the storage service tells about each index commit.
//!
//! The high watermark moves only in [`HighWatermarks`], which the storage service calls after
//! the metadata store accepted the index entries: a consumer never sees a record that is not
//! durable.

use crate::config::TopicSettings;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;
use weir_common::{
    IndexEntry, LeaderEpoch, Offset, PartitionCommit, ProducerBatchState, TopicId, TopicPartition,
};
use weir_metadata_api::{PartitionState, PartitionTail, TopicRecord, PRODUCER_BATCHES_KEPT};
use weir_storage::CommitObserver;

/// How many recent index entries each partition keeps in memory for tail reads.
const RECENT_ENTRIES: usize = 512;

/// Batches an idempotent producer wrote recently to one partition.
#[derive(Clone, Debug, Default)]
pub struct ProducerState {
    pub epoch: i16,
    pub batches: VecDeque<ProducerBatchState>,
}

impl ProducerState {
    fn record(&mut self, b: ProducerBatchState) {
        if b.producer_epoch != self.epoch {
            self.epoch = b.producer_epoch;
            self.batches.clear();
        }
        self.batches.push_back(b);
        while self.batches.len() > PRODUCER_BATCHES_KEPT {
            self.batches.pop_front();
        }
    }
}

pub(crate) fn producers_from(batches: &[ProducerBatchState]) -> HashMap<i64, ProducerState> {
    let mut map: HashMap<i64, ProducerState> = HashMap::new();
    for b in batches {
        map.entry(b.producer_id)
            .or_insert_with(|| ProducerState {
                epoch: b.producer_epoch,
                batches: VecDeque::new(),
            })
            .record(*b);
    }
    map
}

/// The mutable tail of one partition's log.
#[derive(Debug)]
pub struct LogState {
    pub leader_epoch: LeaderEpoch,
    /// Next offset to assign (includes batches not yet durable).
    pub next_offset: Offset,
    /// End of the durable, indexed log: consumers read below it.
    pub high_watermark: Offset,
    pub log_start: Offset,
    /// Producer states including batches in flight.
    pub producers: HashMap<i64, ProducerState>,
    /// Producer states of committed batches only (restored after a failed append).
    pub committed_producers: HashMap<i64, ProducerState>,
    /// The newest index entries, ascending.
    pub recent: VecDeque<IndexEntry>,
    pub deleted: bool,
    /// Moves on each time a failed append resets the partition to its durable end, and at
    /// each change of leadership.
    pub generation: u64,
    /// This gateway leads the partition at `leader_epoch` and accepts appends.
    pub led: bool,
    /// The gateway that leads it as far as this one knows (`weir_metadata_api::NO_LEADER`: none yet), for
    /// Metadata responses.
    pub leader: i32,
}

/// One partition of a topic: its log tail when this gateway leads it.
#[derive(Debug)]
pub struct PartitionLog {
    pub tp: TopicPartition,
    pub state: Mutex<LogState>,
    /// Record bytes appended and fetched through this gateway (the scaler's load figures).
    pub bytes_in: std::sync::atomic::AtomicU64,
    pub bytes_out: std::sync::atomic::AtomicU64,
}

impl PartitionLog {
    /// A partition this gateway does not lead (yet).
    fn from_state(tp: TopicPartition, state: &PartitionState) -> Self {
        PartitionLog {
            tp,
            state: Mutex::new(LogState {
                leader_epoch: state.leader_epoch,
                next_offset: state.next_offset,
                high_watermark: state.next_offset,
                log_start: state.log_start_offset,
                committed_producers: HashMap::new(),
                producers: HashMap::new(),
                recent: VecDeque::new(),
                deleted: false,
                generation: 0,
                led: false,
                leader: state.leader,
            }),
            bytes_in: Default::default(),
            bytes_out: Default::default(),
        }
    }

    /// Starts leading the partition from the tail [`MetadataStore::take_leadership`] returned.
    pub fn install(&self, tail: &PartitionTail, node_id: i32) {
        let producers = producers_from(&tail.producers);
        let mut s = self.lock();
        s.leader_epoch = tail.state.leader_epoch;
        s.next_offset = tail.state.next_offset;
        s.high_watermark = tail.state.next_offset;
        s.log_start = tail.state.log_start_offset;
        s.committed_producers = producers.clone();
        s.producers = producers;
        s.recent.clear();
        s.generation += 1;
        s.led = true;
        s.leader = node_id;
    }

    /// Counts record bytes appended through this gateway.
    pub fn count_in(&self, bytes: usize) {
        self.bytes_in
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts record bytes fetched through this gateway.
    pub fn count_out(&self, bytes: usize) {
        self.bytes_out
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Locks the state (a poisoned lock still holds consistent data: every update is a
    /// few assignments with no early exit).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a failed append: forget every offset and producer sequence past the durable log.
    pub fn reset_to_durable(&self, state: &mut LogState) {
        state.next_offset = state.high_watermark;
        state.producers = state.committed_producers.clone();
    }
}

/// A topic with its partitions.
#[derive(Debug)]
pub struct Topic {
    pub id: TopicId,
    pub name: String,
    pub record: RwLock<TopicRecord>,
    pub settings: RwLock<TopicSettings>,
    pub partitions: RwLock<Vec<Arc<PartitionLog>>>,
}

impl Topic {
    pub fn partition(&self, index: i32) -> Option<Arc<PartitionLog>> {
        let parts = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        usize::try_from(index)
            .ok()
            .and_then(|i| parts.get(i).cloned())
    }

    pub fn partition_count(&self) -> i32 {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len() as i32
    }

    pub fn settings(&self) -> TopicSettings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn record(&self) -> TopicRecord {
        self.record
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[derive(Debug, Default)]
struct Topics {
    by_name: HashMap<String, Arc<Topic>>,
    by_id: HashMap<TopicId, Arc<Topic>>,
}

/// Every topic this gateway serves, and the signal that the log moved.
#[derive(Debug)]
pub struct Registry {
    topics: RwLock<Topics>,
    /// Set when the gateway shuts down: long polls return at once.
    closing: std::sync::atomic::AtomicBool,
    /// Bumped after every commit or truncation; long-polling fetches wait on it.
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            topics: RwLock::new(Topics::default()),
            closing: std::sync::atomic::AtomicBool::new(false),
            changed: watch::channel(0).0,
        }
    }
}

impl Registry {
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .get(name)
            .cloned()
    }

    pub fn topic_by_id(&self, id: TopicId) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(&id)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Topic>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = topics.by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn partition(&self, tp: TopicPartition) -> Option<Arc<PartitionLog>> {
        self.topic_by_id(tp.topic_id)?.partition(tp.partition)
    }

    /// Adds (or replaces) a topic; its partitions are led by whoever `states` says until
    /// the cluster sync takes them here.
    pub fn insert(&self, record: TopicRecord, states: &[PartitionState]) -> Arc<Topic> {
        let mut states: Vec<&PartitionState> = states
            .iter()
            .filter(|s| s.partition < record.partitions)
            .collect();
        states.sort_by_key(|s| s.partition);
        let partitions = states
            .iter()
            .map(|s| {
                let tp = TopicPartition {
                    topic_id: record.id,
                    partition: s.partition,
                };
                Arc::new(PartitionLog::from_state(tp, s))
            })
            .collect();
        let topic = Arc::new(Topic {
            id: record.id,
            name: record.name.clone(),
            settings: RwLock::new(TopicSettings::resolve(&record.configs)),
            record: RwLock::new(record),
            partitions: RwLock::new(partitions),
        });
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = topics.by_name.insert(topic.name.clone(), topic.clone()) {
            // The name was deleted and created again elsewhere: the old topic is gone.
            topics.by_id.remove(&old.id);
        }
        topics.by_id.insert(topic.id, topic.clone());
        topic
    }

    /// Appends newly created partitions to a topic (`states` may hold the old ones too).
    pub fn add_partitions(&self, topic: &Topic, record: TopicRecord, states: &[PartitionState]) {
        let mut parts = topic.partitions.write().unwrap_or_else(|e| e.into_inner());
        let mut states: Vec<&PartitionState> = states
            .iter()
            .filter(|s| s.partition < record.partitions)
            .collect();
        states.sort_by_key(|s| s.partition);
        for st in states {
            if st.partition as usize == parts.len() {
                let tp = TopicPartition {
                    topic_id: topic.id,
                    partition: st.partition,
                };
                parts.push(Arc::new(PartitionLog::from_state(tp, st)));
            }
        }
        *topic.record.write().unwrap_or_else(|e| e.into_inner()) = record;
    }

    pub fn update_configs(&self, topic: &Topic, record: TopicRecord) {
        *topic.settings.write().unwrap_or_else(|e| e.into_inner()) =
            TopicSettings::resolve(&record.configs);
        *topic.record.write().unwrap_or_else(|e| e.into_inner()) = record;
    }

    /// Removes a topic; its partitions refuse further appends and reads.
    pub fn remove(&self, name: &str) -> Option<Arc<Topic>> {
        let id = self.topic(name)?.id;
        self.remove_id(id)
    }

    /// Removes a topic by id (a topic of the same name may have replaced it).
    pub fn remove_id(&self, id: TopicId) -> Option<Arc<Topic>> {
        let topic = {
            let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
            let topic = topics.by_id.remove(&id)?;
            if topics.by_name.get(&topic.name).is_some_and(|t| t.id == id) {
                topics.by_name.remove(&topic.name);
            }
            topic
        };
        for p in topic
            .partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            p.lock().deleted = true;
        }
        self.notify();
        Some(topic)
    }

    /// Records a new log start offset (retention, DeleteRecords).
    pub fn truncated(&self, tp: TopicPartition, log_start: Offset) {
        if let Some(log) = self.partition(tp) {
            let mut state = log.lock();
            state.log_start = state.log_start.max(log_start);
            let start = state.log_start;
            while state.recent.front().is_some_and(|e| e.last_offset < start) {
                state.recent.pop_front();
            }
        }
        self.notify();
    }

    /// Compaction switched a run of the partition's entries to `segment` (same offsets).
    pub fn compacted(&self, tp: TopicPartition, segment: &IndexEntry) {
        if let Some(log) = self.partition(tp) {
            let mut state = log.lock();
            let covered = |e: &IndexEntry| {
                e.base_offset >= segment.base_offset && e.last_offset <= segment.last_offset
            };
            if let Some(at) = state.recent.iter().position(covered) {
                state.recent.retain(|e| !covered(e));
                state.recent.insert(at, segment.clone());
            }
        }
    }

    /// Ends every long poll (shutdown).
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// The gateway's [`CommitObserver`]: advances the high watermarks and committed producer
/// states past each index commit that landed, and wakes waiting fetches. The storage
/// service calls it (in-process, or through [`weir_storage::remote::RemoteStorage`] when a
/// storage node committed) before it completes the appends the commit covers; the gateway
/// never commits to the index itself.
#[derive(Debug)]
pub struct HighWatermarks {
    pub registry: Arc<Registry>,
}

impl HighWatermarks {
    pub fn new(registry: Arc<Registry>) -> Self {
        HighWatermarks { registry }
    }

    /// Advances the partition's tail past a commit that landed.
    fn apply(&self, commit: &PartitionCommit) {
        let Some(log) = self.registry.partition(commit.entry.tp) else {
            return;
        };
        let mut state = log.lock();
        state.high_watermark = state.high_watermark.max(commit.entry.last_offset + 1);
        for p in &commit.producers {
            state
                .committed_producers
                .entry(p.producer_id)
                .or_default()
                .record(*p);
        }
        state.recent.push_back(commit.entry.clone());
        while state.recent.len() > RECENT_ENTRIES {
            state.recent.pop_front();
        }
    }
}

impl CommitObserver for HighWatermarks {
    fn committed(&self, commit: &PartitionCommit) {
        self.apply(commit);
        self.registry.notify();
    }

    fn committed_all(&self, commits: &mut dyn Iterator<Item = &PartitionCommit>) {
        for commit in commits {
            self.apply(commit);
        }
        self.registry.notify();
    }
}
