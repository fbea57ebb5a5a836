//! Weir's shared vocabulary: identifiers, the offset-index entry that links the storage and
//! metadata services, the error kinds callers act on, and small helpers (clock, shutdown).
//!
//! This crate does no I/O and holds no service logic. Storage and metadata APIs speak these
//! types, never Kafka wire types (those stay inside `weir-gateway`).

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod clock;

pub use clock::{Clock, ManualClock, SystemClock};
pub use tokio_util::sync::CancellationToken;

/// A Kafka log offset.
pub type Offset = i64;
/// A partition index within a topic.
pub type PartitionIndex = i32;
/// The leader epoch that fences writes to a partition.
pub type LeaderEpoch = i32;

/// A topic's immutable identity (Kafka's topic id, a UUID). A deleted and re-created topic
/// with the same name gets a new id, so stale data can never leak into the new topic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicId(pub uuid::Uuid);

impl TopicId {
    /// A fresh random topic id.
    pub fn random() -> Self {
        TopicId(uuid::Uuid::new_v4())
    }

    /// The id as a 128-bit integer (used as an ordered key by stores).
    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }

    /// The id from its 128-bit integer form.
    pub fn from_u128(v: u128) -> Self {
        TopicId(uuid::Uuid::from_u128(v))
    }
}

impl fmt::Debug for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One partition of one topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic_id: TopicId,
    pub partition: PartitionIndex,
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic_id, self.partition)
    }
}

/// Where a contiguous run of one partition's record batches lives: one object, one byte range.
///
/// The storage service produces these when it flushes an object; the metadata service keeps
/// them as the offset index; the gateway looks them up to serve fetches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub tp: TopicPartition,
    /// Offset of the first record in the range.
    pub base_offset: Offset,
    /// Offset of the last record in the range.
    pub last_offset: Offset,
    /// Largest record timestamp in the range (ms since the epoch), -1 when unknown.
    pub max_timestamp: i64,
    /// Object key in the object store.
    pub object: String,
    /// Byte position of the range within the object.
    pub position: u64,
    /// Length of the range in bytes.
    pub length: u32,
    /// Number of record batches in the range.
    pub batches: u32,
}

/// The last batch an idempotent producer wrote to a partition, kept so that a retried batch
/// is answered with its original offset and a gap in sequence numbers is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerBatchState {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: Offset,
    pub last_offset: Offset,
}

/// What a caller should do about an error, independent of which crate raised it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Try again later; nothing was changed.
    Retriable,
    /// Another writer owns the resource (stale epoch or offset); refresh and retry elsewhere.
    Fenced,
    /// The request itself is wrong and will never succeed.
    InvalidInput,
    /// The thing asked for does not exist.
    NotFound,
    /// It already exists.
    AlreadyExists,
    /// A backend is unreachable or failing.
    Unavailable,
    /// A bug or corrupt state.
    Internal,
}

/// Reads the `key=value&...` query of a backend URL (`dynamodb://`, `s3://`, `quic://`):
/// one value per known key, in `known` order. An unknown key, a pair without `=` or an
/// empty value is an error naming what is accepted.
pub fn url_params(query: &str, known: &[&str]) -> Result<Vec<Option<String>>, String> {
    let mut values = vec![None; known.len()];
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let slot = pair
            .split_once('=')
            .filter(|(_, v)| !v.is_empty())
            .and_then(|(k, v)| known.iter().position(|n| *n == k).map(|i| (i, v)));
        match slot {
            Some((i, v)) => values[i] = Some(v.to_string()),
            None => {
                return Err(format!(
                    "unknown parameter '{pair}' (known: {})",
                    known.join(", ")
                ))
            }
        }
    }
    Ok(values)
}

/// Milliseconds since the Unix epoch, the unit Kafka timestamps use.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One partition's share of a flushed object, to be committed to the offset index.
///
/// The commit succeeds only if the partition's leader epoch and next offset in the metadata
/// store still equal `leader_epoch` and `entry.base_offset`: a deposed leader or a writer that
/// lost an earlier flush can never fork or overwrite the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCommit {
    pub leader_epoch: LeaderEpoch,
    pub entry: IndexEntry,
    /// Idempotent-producer states after this entry's batches (one per producer id).
    pub producers: Vec<ProducerBatchState>,
}

/// Why one partition's commit was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CommitRefused {
    #[error("partition not found (topic deleted?)")]
    UnknownPartition,
    #[error("fenced: leader epoch is {current}, commit carried {expected}")]
    EpochFenced {
        current: LeaderEpoch,
        expected: LeaderEpoch,
    },
    #[error("offset mismatch: next offset is {current}, commit starts at {expected}")]
    OffsetMismatch { current: Offset, expected: Offset },
}

/// A hash that every build computes the same way (FNV-1a, then MurmurHash3's 64-bit
/// finalizer to spread the bits): gateways built by different compilers must agree.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}
