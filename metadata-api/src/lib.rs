//! The metadata service's API: the [`MetadataStore`] trait, the types it speaks and its
//! errors, and the typed [`membership`] records, without any backend.
//!
//! Services that *use* metadata (the gateway, the storage service, the scaler) depend on this
//! crate only; the backends (embedded redb, DynamoDB, the QUIC client and server) and
//! `open(url)` are in `weir-metadata`, which re-exports everything here. Building a gateway
//! therefore does not build the AWS SDK or redb through its metadata dependency.
//!
//! Every write that guards the log is conditional: [`MetadataStore::commit_index`] refuses a
//! partition's entry unless the leader epoch and next offset still match, so a stale writer
//! can never fork the log. It never holds Kafka wire types; it speaks `weir-common` types.

pub mod membership;

use async_trait::async_trait;
use std::collections::BTreeMap;
use weir_common::{
    CommitRefused, ErrorKind, IndexEntry, LeaderEpoch, Offset, PartitionCommit, PartitionIndex,
    ProducerBatchState, TopicId, TopicPartition,
};

/// Errors of the metadata service.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MetadataError {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("unknown partition {0}")]
    UnknownPartition(TopicPartition),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("metadata backend error: {0}")]
    Backend(String),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    #[error("record '{0}' already exists")]
    RecordExists(String),
}

impl MetadataError {
    /// What the caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MetadataError::TopicExists(_) | MetadataError::RecordExists(_) => {
                ErrorKind::AlreadyExists
            }
            MetadataError::UnknownTopic(_) | MetadataError::UnknownPartition(_) => {
                ErrorKind::NotFound
            }
            MetadataError::Invalid(_) => ErrorKind::InvalidInput,
            MetadataError::Backend(_) => ErrorKind::Unavailable,
            MetadataError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = MetadataError> = std::result::Result<T, E>;

/// A topic as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub id: TopicId,
    pub partitions: i32,
    /// Configs explicitly set on the topic (defaults are not stored).
    pub configs: BTreeMap<String, String>,
    pub created_ms: i64,
}

/// The durable state of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionState {
    pub partition: PartitionIndex,
    /// The offset the next committed batch must start at (the log end, the high watermark).
    pub next_offset: Offset,
    /// The first offset still readable.
    pub log_start_offset: Offset,
    pub leader_epoch: LeaderEpoch,
    /// Bytes of record batches between the log start and the log end.
    #[serde(default)]
    pub log_bytes: u64,
    /// The gateway (node id) that leads the partition at `leader_epoch`, or [`NO_LEADER`]
    /// (new partitions, and partitions a leader handed over).
    #[serde(default = "no_leader")]
    pub leader: i32,
}

/// [`PartitionState::leader`] when no gateway leads the partition.
pub const NO_LEADER: i32 = -1;

fn no_leader() -> i32 {
    NO_LEADER
}

impl PartitionState {
    /// The state of a new, empty partition.
    pub fn empty(partition: PartitionIndex) -> Self {
        PartitionState {
            partition,
            next_offset: 0,
            log_start_offset: 0,
            leader_epoch: 0,
            log_bytes: 0,
            leader: NO_LEADER,
        }
    }
}

/// A partition's state plus what a new leader needs to take over its tail.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionTail {
    pub state: PartitionState,
    /// Recent idempotent-producer batches, oldest first, at most a few per producer.
    pub producers: Vec<ProducerBatchState>,
}

/// What a retention or delete-records pass removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Truncation {
    /// The log start offset after the pass.
    pub log_start_offset: Offset,
    /// Index entries removed.
    pub removed_entries: usize,
    /// Objects no index entry refers to any more: the caller deletes them.
    pub dead_objects: Vec<String>,
}

/// The outcome of one partition's commit in [`MetadataStore::commit_index`].
pub type CommitOutcome = std::result::Result<(), CommitRefused>;

/// How many batches per producer and partition are remembered for duplicate detection
/// (Kafka remembers the last five, matching `max.in.flight.requests.per.connection`).
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// Retention limits of one partition, as a retention pass applies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetentionLimits {
    /// Entries whose newest record is older than this (ms since the epoch) are removed; None: no limit.
    pub min_timestamp: Option<i64>,
    /// Oldest entries are removed while the partition holds more than this many bytes; None: no limit.
    pub max_bytes: Option<u64>,
}

/// An offset a consumer group committed for one partition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: PartitionIndex,
    pub offset: Offset,
    pub leader_epoch: LeaderEpoch,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

/// Everything Weir keeps about topics, partitions and the log. Backends: embedded (`redb`),
/// later DynamoDB. Every method is one atomic transaction.
#[async_trait]
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// Registers the backend's metrics (request counts and the like), if it has any.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// The cluster id, created on first use.
    async fn cluster_id(&self) -> Result<String>;

    /// Creates a topic with `partitions` empty partitions.
    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicRecord>;

    /// Deletes a topic, its partitions, index entries and producer states. Returns the
    /// removed topic and the objects no longer referenced.
    async fn delete_topic(&self, name: &str) -> Result<(TopicRecord, Vec<String>)>;

    async fn get_topic(&self, name: &str) -> Result<Option<TopicRecord>>;

    async fn list_topics(&self) -> Result<Vec<TopicRecord>>;

    /// Grows a topic to `total` partitions.
    async fn create_partitions(&self, name: &str, total: i32) -> Result<TopicRecord>;

    /// Replaces a topic's explicitly set configs.
    async fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicRecord>;

    /// Takes leadership of the partitions of a topic numbered `from` and up: bumps each
    /// leader epoch and returns the tail state the new leader starts from.
    async fn acquire_partitions(
        &self,
        topic: TopicId,
        from: PartitionIndex,
    ) -> Result<Vec<PartitionTail>>;

    /// Makes gateway `node` the leader of `tp`, if the partition's leader epoch is still
    /// `expected_epoch`: the epoch goes up by one, which fences every commit of an earlier
    /// leader, and the tail the new leader starts from is returned. `None`: the epoch moved
    /// on (another gateway took the partition first) or there is no such partition.
    async fn take_leadership(
        &self,
        tp: TopicPartition,
        node: i32,
        expected_epoch: LeaderEpoch,
    ) -> Result<Option<PartitionTail>>;

    /// Hands a partition over after its leader stopped, flushed and committed: clears the
    /// leader if `node` still leads `tp` at `epoch` (the epoch itself moves on when the next
    /// leader takes it). Returns whether it did.
    async fn release_leadership(
        &self,
        tp: TopicPartition,
        node: i32,
        epoch: LeaderEpoch,
    ) -> Result<bool>;

    /// The state of every partition of a topic (leaders and epochs), ascending.
    async fn partition_states(&self, topic: TopicId) -> Result<Vec<PartitionState>>;

    /// Reads a partition's tail state without taking leadership (a leader re-reads its
    /// partition after a commit whose outcome it could not learn). None: no such partition.
    async fn partition_tail(&self, tp: TopicPartition) -> Result<Option<PartitionTail>>;

    /// Commits the index entries of one flushed object, one transaction for all partitions.
    /// Each partition's commit is checked separately; refused ones are skipped, the rest
    /// commit. Returns one outcome per commit, in order.
    async fn commit_index(&self, commits: Vec<PartitionCommit>) -> Result<Vec<CommitOutcome>>;

    /// Replaces a run of a partition's index entries with one entry covering the same
    /// offsets (compaction wrote them into one segment object: the same bytes, or fewer when
    /// key compaction dropped superseded records; the partition's byte count follows). Atomic, and only
    /// if the index still holds exactly `old` (same base offsets and objects): returns
    /// `None` when retention, a truncation or another compaction changed them first, else
    /// the objects nothing refers to any more (the caller deletes them after a grace period,
    /// so that reads in flight finish).
    async fn replace_index(
        &self,
        tp: TopicPartition,
        old: Vec<IndexEntry>,
        new: IndexEntry,
    ) -> Result<Option<Vec<String>>>;

    /// Index entries of a partition whose last offset is >= `offset`, ascending, at most `limit`.
    async fn index_from(
        &self,
        tp: TopicPartition,
        offset: Offset,
        limit: usize,
    ) -> Result<Vec<IndexEntry>>;

    /// The first index entry of a partition whose max timestamp is >= `timestamp`.
    async fn index_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>>;

    /// The index entry with the largest max timestamp (the earliest such entry on ties).
    async fn index_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexEntry>>;

    /// Moves the log start offset forward to `offset` (DeleteRecords) and drops index
    /// entries wholly below it. `offset` must not exceed the next offset.
    async fn delete_records(&self, tp: TopicPartition, offset: Offset) -> Result<Truncation>;

    /// Applies retention to a partition: drops whole index entries from the start while they
    /// are older than the time limit or the partition is over the byte limit.
    async fn apply_retention(
        &self,
        tp: TopicPartition,
        limits: RetentionLimits,
    ) -> Result<Truncation>;

    /// Allocates a new producer id.
    async fn allocate_producer_id(&self) -> Result<i64>;

    /// Every object some index entry refers to.
    async fn live_objects(&self) -> Result<Vec<String>>;

    /// Stores a group's committed offsets (one transaction; replaces earlier commits of the
    /// same partitions).
    async fn commit_offsets(&self, group: &str, offsets: Vec<CommittedOffset>) -> Result<()>;

    /// Every committed offset of a group, ordered by topic and partition.
    async fn fetch_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>>;

    /// Deletes a group's committed offsets: the given partitions, or all when `None`.
    /// Returns how many were deleted.
    async fn delete_offsets(
        &self,
        group: &str,
        partitions: Option<Vec<(String, PartitionIndex)>>,
    ) -> Result<usize>;

    /// Every group that has committed offsets.
    async fn offset_groups(&self) -> Result<Vec<String>>;

    /// Reads one record of a namespace of small documents (credentials, principals,
    /// policies: anything that is neither log nor group state).
    async fn record_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>>;

    /// Writes a record. With `create_only`, fails with [`MetadataError::RecordExists`] when
    /// the key is taken (so two writers can never claim one key).
    async fn record_put(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        create_only: bool,
    ) -> Result<()>;

    /// Deletes a record; returns whether it existed.
    async fn record_delete(&self, namespace: &str, key: &str) -> Result<bool>;

    /// Every record of a namespace, ordered by key.
    async fn record_list(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>>;
}

/// For backends: checks that `new` covers exactly the offsets of the contiguous run `old` of
/// partition `tp`, in no more bytes and batches, as [`MetadataStore::replace_index`] requires.
pub fn check_replacement(tp: TopicPartition, old: &[IndexEntry], new: &IndexEntry) -> Result<()> {
    let invalid = |why: &str| Err(MetadataError::Invalid(format!("index replacement: {why}")));
    let (Some(first), Some(last)) = (old.first(), old.last()) else {
        return invalid("no entries to replace");
    };
    if new.tp != tp || old.iter().any(|e| e.tp != tp) {
        return invalid("entries of another partition");
    }
    if old
        .windows(2)
        .any(|w| w[0].last_offset + 1 != w[1].base_offset)
    {
        return invalid("the entries are not contiguous");
    }
    let length: u64 = old.iter().map(|e| u64::from(e.length)).sum();
    let batches: u64 = old.iter().map(|e| u64::from(e.batches)).sum();
    if new.base_offset != first.base_offset
        || new.last_offset != last.last_offset
        || u64::from(new.length) > length
        || u64::from(new.batches) > batches
    {
        return invalid("the new entry does not cover the same offsets in as many bytes or fewer");
    }
    if old.iter().any(|e| e.object == new.object) {
        return invalid("the new entry must be in a new object");
    }
    Ok(())
}

/// For backends: how many bytes a replacement removes from the partition (key compaction drops records).
pub fn replaced_bytes(old: &[IndexEntry], new: &IndexEntry) -> u64 {
    old.iter()
        .map(|e| u64::from(e.length))
        .sum::<u64>()
        .saturating_sub(u64::from(new.length))
}
