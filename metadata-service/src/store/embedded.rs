//! The embedded backend: one `redb` database file, ACID transactions, fsync on commit.
//!
//! Values are JSON (small, debuggable, forward compatible with `#[serde(default)]`); keys are
//! tuples so that range scans follow offset order. All redb calls run on the blocking pool.

use super::{decode, encode};
use crate::{
    CommitOutcome, CommittedOffset, MetadataError, MetadataStore, PartitionState, PartitionTail,
    Result, RetentionLimits, TopicRecord, Truncation, PRODUCER_BATCHES_KEPT,
};
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use weir_common::{
    now_ms, CommitRefused, IndexEntry, LeaderEpoch, Offset, PartitionCommit, ProducerBatchState,
    TopicId, TopicPartition,
};

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const COUNTERS: TableDefinition<&str, i64> = TableDefinition::new("counters");
const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
/// (topic id, partition) -> PartitionState
const PARTITIONS: TableDefinition<(u128, i32), &[u8]> = TableDefinition::new("partitions");
/// (topic id, partition, base offset) -> IndexEntry
const INDEX: TableDefinition<(u128, i32, i64), &[u8]> = TableDefinition::new("offset_index");
/// object key -> number of index entries pointing into it
const OBJECTS: TableDefinition<&str, u64> = TableDefinition::new("objects");
/// (group, topic name, partition) -> CommittedOffset
const GROUP_OFFSETS: TableDefinition<(&str, &str, i32), &[u8]> =
    TableDefinition::new("group_offsets");
/// (topic id, partition, producer id) -> recent batches of that producer
const PRODUCERS: TableDefinition<(u128, i32, i64), &[u8]> = TableDefinition::new("producers");
/// (namespace, key) -> document
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");

/// The embedded metadata store (`embedded://<dir>`).
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn backend<E: std::fmt::Display>(e: E) -> MetadataError {
    MetadataError::Backend(e.to_string())
}

fn pkey(tp: TopicPartition) -> (u128, i32) {
    (tp.topic_id.as_u128(), tp.partition)
}

impl EmbeddedStore {
    /// Opens (or creates) the database in directory `dir` (file `dir/metadata.redb`).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = Database::create(dir.join("metadata.redb")).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        {
            // Create every table up front so read transactions never see a missing table.
            txn.open_table(META).map_err(backend)?;
            txn.open_table(COUNTERS).map_err(backend)?;
            txn.open_table(TOPICS).map_err(backend)?;
            txn.open_table(PARTITIONS).map_err(backend)?;
            txn.open_table(INDEX).map_err(backend)?;
            txn.open_table(OBJECTS).map_err(backend)?;
            txn.open_table(PRODUCERS).map_err(backend)?;
            txn.open_table(GROUP_OFFSETS).map_err(backend)?;
            txn.open_table(RECORDS).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    /// Reads a topic, lets `change` modify it (and write related tables), stores it: one
    /// transaction.
    async fn update_topic<F>(&self, name: &str, change: F) -> Result<TopicRecord>
    where
        F: FnOnce(&redb::WriteTransaction, &mut TopicRecord) -> Result<()> + Send + 'static,
    {
        let name = name.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let record = {
                let mut topics = txn.open_table(TOPICS).map_err(backend)?;
                let mut record = read_topic(&topics, &name)?
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                change(&txn, &mut record)?;
                topics
                    .insert(name.as_str(), encode(&record)?.as_slice())
                    .map_err(backend)?;
                record
            };
            txn.commit().map_err(backend)?;
            Ok(record)
        })
        .await
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| MetadataError::Backend(format!("metadata task failed: {e}")))?
    }
}

fn read_topic(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<TopicRecord>> {
    match table.get(name).map_err(backend)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn read_partition(
    table: &impl ReadableTable<(u128, i32), &'static [u8]>,
    tp: TopicPartition,
) -> Result<Option<PartitionState>> {
    match table.get(pkey(tp)).map_err(backend)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

/// The idempotent-producer batches kept for a partition, oldest first per producer.
fn read_producers(
    table: &impl ReadableTable<(u128, i32, i64), &'static [u8]>,
    tp: TopicPartition,
) -> Result<Vec<ProducerBatchState>> {
    let (t, p) = pkey(tp);
    let mut batches = Vec::new();
    for item in table
        .range((t, p, i64::MIN)..=(t, p, i64::MAX))
        .map_err(backend)?
    {
        let (_, v) = item.map_err(backend)?;
        batches.extend(decode::<Vec<ProducerBatchState>>(v.value())?);
    }
    Ok(batches)
}

/// Removes index entries of `tp` from the front while `drop` says so; maintains object
/// reference counts; returns (removed entries, removed bytes, dead objects).
fn drop_front(
    index: &mut redb::Table<(u128, i32, i64), &[u8]>,
    objects: &mut redb::Table<&str, u64>,
    tp: TopicPartition,
    mut drop: impl FnMut(&IndexEntry) -> bool,
) -> Result<(Vec<IndexEntry>, Vec<String>)> {
    let (t, p) = pkey(tp);
    let mut removed = Vec::new();
    {
        let range = index
            .range((t, p, i64::MIN)..=(t, p, i64::MAX))
            .map_err(backend)?;
        for item in range {
            let (_, v) = item.map_err(backend)?;
            let entry: IndexEntry = decode(v.value())?;
            if !drop(&entry) {
                break;
            }
            removed.push(entry);
        }
    }
    let mut dead = Vec::new();
    for entry in &removed {
        index.remove((t, p, entry.base_offset)).map_err(backend)?;
        dead.extend(release_object(objects, &entry.object)?);
    }
    Ok((removed, dead))
}

/// Decrements an object's reference count; returns its key when nothing refers to it any more.
fn release_object(objects: &mut redb::Table<&str, u64>, key: &str) -> Result<Option<String>> {
    let count = objects
        .get(key)
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0);
    if count <= 1 {
        objects.remove(key).map_err(backend)?;
        Ok(Some(key.to_string()))
    } else {
        objects.insert(key, count - 1).map_err(backend)?;
        Ok(None)
    }
}

fn truncate_partition(
    txn: &redb::WriteTransaction,
    tp: TopicPartition,
    mut new_start: impl FnMut(&PartitionState) -> Option<Offset>,
    drop: impl FnMut(&IndexEntry) -> bool,
) -> Result<Truncation> {
    let mut parts = txn.open_table(PARTITIONS).map_err(backend)?;
    let mut state = read_partition(&parts, tp)?.ok_or(MetadataError::UnknownPartition(tp))?;
    let mut index = txn.open_table(INDEX).map_err(backend)?;
    let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
    let requested = new_start(&state);
    let (removed, dead) = drop_front(&mut index, &mut objects, tp, drop)?;
    let removed_bytes: u64 = removed.iter().map(|e| u64::from(e.length)).sum();
    let after_removed = removed
        .last()
        .map(|e| e.last_offset + 1)
        .unwrap_or(i64::MIN);
    let start = state
        .log_start_offset
        .max(after_removed)
        .max(requested.unwrap_or(i64::MIN))
        .min(state.next_offset);
    state.log_start_offset = start;
    state.log_bytes = state.log_bytes.saturating_sub(removed_bytes);
    parts
        .insert(pkey(tp), encode(&state)?.as_slice())
        .map_err(backend)?;
    Ok(Truncation {
        log_start_offset: start,
        removed_entries: removed.len(),
        dead_objects: dead,
    })
}

#[async_trait]
impl MetadataStore for EmbeddedStore {
    async fn cluster_id(&self) -> Result<String> {
        self.blocking(|db| {
            let txn = db.begin_write().map_err(backend)?;
            let id = {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let existing = meta
                    .get("cluster_id")
                    .map_err(backend)?
                    .map(|v| v.value().to_string());
                match existing {
                    Some(id) => id,
                    None => {
                        let id = uuid::Uuid::new_v4().simple().to_string();
                        meta.insert("cluster_id", id.as_str()).map_err(backend)?;
                        id
                    }
                }
            };
            txn.commit().map_err(backend)?;
            Ok(id)
        })
        .await
    }

    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicRecord> {
        if partitions < 1 {
            return Err(MetadataError::Invalid(
                "partition count must be at least 1".into(),
            ));
        }
        let name = name.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let record = {
                let mut topics = txn.open_table(TOPICS).map_err(backend)?;
                if read_topic(&topics, &name)?.is_some() {
                    return Err(MetadataError::TopicExists(name));
                }
                let record = TopicRecord {
                    name: name.clone(),
                    id: TopicId::random(),
                    partitions,
                    configs,
                    created_ms: now_ms(),
                };
                topics
                    .insert(name.as_str(), encode(&record)?.as_slice())
                    .map_err(backend)?;
                let mut parts = txn.open_table(PARTITIONS).map_err(backend)?;
                for p in 0..partitions {
                    let state = PartitionState::empty(p);
                    parts
                        .insert((record.id.as_u128(), p), encode(&state)?.as_slice())
                        .map_err(backend)?;
                }
                record
            };
            txn.commit().map_err(backend)?;
            Ok(record)
        })
        .await
    }

    async fn delete_topic(&self, name: &str) -> Result<(TopicRecord, Vec<String>)> {
        let name = name.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let mut dead = Vec::new();
            let record = {
                let mut topics = txn.open_table(TOPICS).map_err(backend)?;
                let record = read_topic(&topics, &name)?
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                topics.remove(name.as_str()).map_err(backend)?;
                let t = record.id.as_u128();
                let mut parts = txn.open_table(PARTITIONS).map_err(backend)?;
                let mut index = txn.open_table(INDEX).map_err(backend)?;
                let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
                let mut producers = txn.open_table(PRODUCERS).map_err(backend)?;
                for p in 0..record.partitions {
                    parts.remove((t, p)).map_err(backend)?;
                    let tp = TopicPartition {
                        topic_id: record.id,
                        partition: p,
                    };
                    let (_, d) = drop_front(&mut index, &mut objects, tp, |_| true)?;
                    dead.extend(d);
                }
                producers
                    .retain_in((t, i32::MIN, i64::MIN)..=(t, i32::MAX, i64::MAX), |_, _| {
                        false
                    })
                    .map_err(backend)?;
                // Committed offsets of a deleted topic go with it, as in Kafka.
                let mut offsets = txn.open_table(GROUP_OFFSETS).map_err(backend)?;
                offsets
                    .retain(|(_, topic, _), _| topic != name.as_str())
                    .map_err(backend)?;
                record
            };
            txn.commit().map_err(backend)?;
            Ok((record, dead))
        })
        .await
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicRecord>> {
        let name = name.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let topics = txn.open_table(TOPICS).map_err(backend)?;
            read_topic(&topics, &name)
        })
        .await
    }

    async fn list_topics(&self) -> Result<Vec<TopicRecord>> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let topics = txn.open_table(TOPICS).map_err(backend)?;
            let mut out = Vec::new();
            for item in topics.iter().map_err(backend)? {
                let (_, v) = item.map_err(backend)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<TopicRecord> {
        self.update_topic(name, move |txn, record| {
            if total <= record.partitions {
                return Err(MetadataError::Invalid(format!(
                    "topic '{}' has {} partitions; the new count {total} must be larger",
                    record.name, record.partitions
                )));
            }
            let mut parts = txn.open_table(PARTITIONS).map_err(backend)?;
            for p in record.partitions..total {
                parts
                    .insert(
                        (record.id.as_u128(), p),
                        encode(&PartitionState::empty(p))?.as_slice(),
                    )
                    .map_err(backend)?;
            }
            record.partitions = total;
            Ok(())
        })
        .await
    }

    async fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicRecord> {
        self.update_topic(name, move |_, record| {
            record.configs = configs;
            Ok(())
        })
        .await
    }

    async fn acquire_partitions(
        &self,
        topic: TopicId,
        from: weir_common::PartitionIndex,
    ) -> Result<Vec<PartitionTail>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let t = topic.as_u128();
            let mut tails = Vec::new();
            {
                let mut parts = txn.open_table(PARTITIONS).map_err(backend)?;
                let mut states = Vec::new();
                for item in parts.range((t, from)..=(t, i32::MAX)).map_err(backend)? {
                    let (_, v) = item.map_err(backend)?;
                    states.push(decode::<PartitionState>(v.value())?);
                }
                let producers = txn.open_table(PRODUCERS).map_err(backend)?;
                for mut state in states {
                    state.leader_epoch += 1;
                    parts
                        .insert((t, state.partition), encode(&state)?.as_slice())
                        .map_err(backend)?;
                    let mut batches = Vec::new();
                    let range = (t, state.partition, i64::MIN)..=(t, state.partition, i64::MAX);
                    for item in producers.range(range).map_err(backend)? {
                        let (_, v) = item.map_err(backend)?;
                        batches.extend(decode::<Vec<ProducerBatchState>>(v.value())?);
                    }
                    tails.push(PartitionTail {
                        state,
                        producers: batches,
                    });
                }
            }
            txn.commit().map_err(backend)?;
            Ok(tails)
        })
        .await
    }

    async fn take_leadership(
        &self,
        tp: TopicPartition,
        node: i32,
        expected_epoch: LeaderEpoch,
    ) -> Result<Option<PartitionTail>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let tail = {
                let mut parts = txn.open_table(PARTITIONS).map_err(backend)?;
                let Some(mut state) = read_partition(&parts, tp)? else {
                    return Ok(None);
                };
                if state.leader_epoch != expected_epoch {
                    return Ok(None);
                }
                state.leader_epoch += 1;
                state.leader = node;
                parts
                    .insert(pkey(tp), encode(&state)?.as_slice())
                    .map_err(backend)?;
                let producers = txn.open_table(PRODUCERS).map_err(backend)?;
                PartitionTail {
                    state,
                    producers: read_producers(&producers, tp)?,
                }
            };
            txn.commit().map_err(backend)?;
            Ok(Some(tail))
        })
        .await
    }

    async fn release_leadership(
        &self,
        tp: TopicPartition,
        node: i32,
        epoch: LeaderEpoch,
    ) -> Result<bool> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut parts = txn.open_table(PARTITIONS).map_err(backend)?;
                let Some(mut state) = read_partition(&parts, tp)? else {
                    return Ok(false);
                };
                if state.leader != node || state.leader_epoch != epoch {
                    return Ok(false);
                }
                state.leader = crate::NO_LEADER;
                parts
                    .insert(pkey(tp), encode(&state)?.as_slice())
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn partition_states(&self, topic: TopicId) -> Result<Vec<PartitionState>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let parts = txn.open_table(PARTITIONS).map_err(backend)?;
            let t = topic.as_u128();
            let mut states = Vec::new();
            for item in parts.range((t, 0)..=(t, i32::MAX)).map_err(backend)? {
                let (_, v) = item.map_err(backend)?;
                states.push(decode::<PartitionState>(v.value())?);
            }
            Ok(states)
        })
        .await
    }

    async fn partition_tail(&self, tp: TopicPartition) -> Result<Option<PartitionTail>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let parts = txn.open_table(PARTITIONS).map_err(backend)?;
            let Some(state) = read_partition(&parts, tp)? else {
                return Ok(None);
            };
            let producers = txn.open_table(PRODUCERS).map_err(backend)?;
            Ok(Some(PartitionTail {
                state,
                producers: read_producers(&producers, tp)?,
            }))
        })
        .await
    }

    async fn commit_index(&self, commits: Vec<PartitionCommit>) -> Result<Vec<CommitOutcome>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let mut outcomes = Vec::with_capacity(commits.len());
            {
                let mut parts = txn.open_table(PARTITIONS).map_err(backend)?;
                let mut index = txn.open_table(INDEX).map_err(backend)?;
                let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
                let mut producers = txn.open_table(PRODUCERS).map_err(backend)?;
                for commit in commits {
                    let entry = &commit.entry;
                    let tp = entry.tp;
                    let Some(mut state) = read_partition(&parts, tp)? else {
                        outcomes.push(Err(CommitRefused::UnknownPartition));
                        continue;
                    };
                    if state.leader_epoch != commit.leader_epoch {
                        outcomes.push(Err(CommitRefused::EpochFenced {
                            current: state.leader_epoch,
                            expected: commit.leader_epoch,
                        }));
                        continue;
                    }
                    if state.next_offset != entry.base_offset {
                        outcomes.push(Err(CommitRefused::OffsetMismatch {
                            current: state.next_offset,
                            expected: entry.base_offset,
                        }));
                        continue;
                    }
                    let (t, p) = pkey(tp);
                    index
                        .insert((t, p, entry.base_offset), encode(entry)?.as_slice())
                        .map_err(backend)?;
                    let refs = objects
                        .get(entry.object.as_str())
                        .map_err(backend)?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    objects
                        .insert(entry.object.as_str(), refs + 1)
                        .map_err(backend)?;
                    state.next_offset = entry.last_offset + 1;
                    state.log_bytes += u64::from(entry.length);
                    parts
                        .insert((t, p), encode(&state)?.as_slice())
                        .map_err(backend)?;
                    for producer in &commit.producers {
                        let key = (t, p, producer.producer_id);
                        let mut kept: Vec<ProducerBatchState> =
                            match producers.get(key).map_err(backend)? {
                                Some(v) => decode(v.value())?,
                                None => Vec::new(),
                            };
                        kept.retain(|b| b.producer_epoch == producer.producer_epoch);
                        kept.push(*producer);
                        if kept.len() > PRODUCER_BATCHES_KEPT {
                            kept.drain(..kept.len() - PRODUCER_BATCHES_KEPT);
                        }
                        producers
                            .insert(key, encode(&kept)?.as_slice())
                            .map_err(backend)?;
                    }
                    outcomes.push(Ok(()));
                }
            }
            txn.commit().map_err(backend)?;
            Ok(outcomes)
        })
        .await
    }

    async fn index_from(
        &self,
        tp: TopicPartition,
        offset: Offset,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let index = txn.open_table(INDEX).map_err(backend)?;
            let (t, p) = pkey(tp);
            let mut out = Vec::new();
            // The entry containing `offset` starts at or before it: begin with the last such entry.
            if let Some(item) = index
                .range((t, p, i64::MIN)..=(t, p, offset))
                .map_err(backend)?
                .next_back()
            {
                let (_, v) = item.map_err(backend)?;
                let entry: IndexEntry = decode(v.value())?;
                if entry.last_offset >= offset {
                    out.push(entry);
                }
            }
            if out.len() < limit && offset < i64::MAX {
                for item in index
                    .range((t, p, offset + 1)..=(t, p, i64::MAX))
                    .map_err(backend)?
                {
                    let (_, v) = item.map_err(backend)?;
                    out.push(decode(v.value())?);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn index_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let index = txn.open_table(INDEX).map_err(backend)?;
            let (t, p) = pkey(tp);
            for item in index
                .range((t, p, i64::MIN)..=(t, p, i64::MAX))
                .map_err(backend)?
            {
                let (_, v) = item.map_err(backend)?;
                let entry: IndexEntry = decode(v.value())?;
                if entry.max_timestamp >= timestamp {
                    return Ok(Some(entry));
                }
            }
            Ok(None)
        })
        .await
    }

    async fn index_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexEntry>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let index = txn.open_table(INDEX).map_err(backend)?;
            let (t, p) = pkey(tp);
            let mut best: Option<IndexEntry> = None;
            for item in index
                .range((t, p, i64::MIN)..=(t, p, i64::MAX))
                .map_err(backend)?
            {
                let (_, v) = item.map_err(backend)?;
                let entry: IndexEntry = decode(v.value())?;
                if best
                    .as_ref()
                    .is_none_or(|b| entry.max_timestamp > b.max_timestamp)
                {
                    best = Some(entry);
                }
            }
            Ok(best)
        })
        .await
    }

    async fn replace_index(
        &self,
        tp: TopicPartition,
        old: Vec<IndexEntry>,
        new: IndexEntry,
    ) -> Result<Option<Vec<String>>> {
        crate::check_replacement(tp, &old, &new)?;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let (t, p) = (tp.topic_id.as_u128(), tp.partition);
            let dead = {
                let mut index = txn.open_table(INDEX).map_err(backend)?;
                let mut objects = txn.open_table(OBJECTS).map_err(backend)?;
                for e in &old {
                    let held: Option<IndexEntry> =
                        match index.get((t, p, e.base_offset)).map_err(backend)? {
                            Some(v) => Some(decode(v.value())?),
                            None => None,
                        };
                    if held.as_ref() != Some(e) {
                        drop((index, objects));
                        txn.abort().map_err(backend)?;
                        return Ok(None);
                    }
                }
                let mut dead = Vec::new();
                for e in &old {
                    index.remove((t, p, e.base_offset)).map_err(backend)?;
                    dead.extend(release_object(&mut objects, &e.object)?);
                }
                index
                    .insert((t, p, new.base_offset), encode(&new)?.as_slice())
                    .map_err(backend)?;
                let removed = crate::replaced_bytes(&old, &new);
                if removed > 0 {
                    let mut parts = txn.open_table(PARTITIONS).map_err(backend)?;
                    let mut state =
                        read_partition(&parts, tp)?.ok_or(MetadataError::UnknownPartition(tp))?;
                    state.log_bytes = state.log_bytes.saturating_sub(removed);
                    parts
                        .insert(pkey(tp), encode(&state)?.as_slice())
                        .map_err(backend)?;
                }
                let refs = objects
                    .get(new.object.as_str())
                    .map_err(backend)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                objects
                    .insert(new.object.as_str(), refs + 1)
                    .map_err(backend)?;
                dead
            };
            txn.commit().map_err(backend)?;
            Ok(Some(dead))
        })
        .await
    }

    async fn delete_records(&self, tp: TopicPartition, offset: Offset) -> Result<Truncation> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let truncation = {
                let parts = txn.open_table(PARTITIONS).map_err(backend)?;
                let state =
                    read_partition(&parts, tp)?.ok_or(MetadataError::UnknownPartition(tp))?;
                drop(parts);
                if offset > state.next_offset || offset < 0 {
                    return Err(MetadataError::Invalid(format!(
                        "offset {offset} is outside the log [0, {}]",
                        state.next_offset
                    )));
                }
                truncate_partition(&txn, tp, |_| Some(offset), |e| e.last_offset < offset)?
            };
            txn.commit().map_err(backend)?;
            Ok(truncation)
        })
        .await
    }

    async fn apply_retention(
        &self,
        tp: TopicPartition,
        limits: RetentionLimits,
    ) -> Result<Truncation> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let truncation = {
                let parts = txn.open_table(PARTITIONS).map_err(backend)?;
                let state =
                    read_partition(&parts, tp)?.ok_or(MetadataError::UnknownPartition(tp))?;
                drop(parts);
                let mut bytes = state.log_bytes;
                truncate_partition(
                    &txn,
                    tp,
                    |_| None,
                    |e| {
                        let expired = limits
                            .min_timestamp
                            .is_some_and(|min| e.max_timestamp < min);
                        let oversize = limits
                            .max_bytes
                            .is_some_and(|max| bytes.saturating_sub(u64::from(e.length)) >= max);
                        if expired || oversize {
                            bytes = bytes.saturating_sub(u64::from(e.length));
                            true
                        } else {
                            false
                        }
                    },
                )?
            };
            if truncation.removed_entries == 0 {
                // Nothing changed: do not pay for a durable commit.
                txn.abort().map_err(backend)?;
            } else {
                txn.commit().map_err(backend)?;
            }
            Ok(truncation)
        })
        .await
    }

    async fn allocate_producer_id(&self) -> Result<i64> {
        self.blocking(|db| {
            let txn = db.begin_write().map_err(backend)?;
            let id = {
                let mut counters = txn.open_table(COUNTERS).map_err(backend)?;
                let next = counters
                    .get("producer_id")
                    .map_err(backend)?
                    .map(|v| v.value())
                    .unwrap_or(1000);
                counters.insert("producer_id", next + 1).map_err(backend)?;
                next
            };
            txn.commit().map_err(backend)?;
            Ok(id)
        })
        .await
    }

    async fn live_objects(&self) -> Result<Vec<String>> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let objects = txn.open_table(OBJECTS).map_err(backend)?;
            let mut out = Vec::new();
            for item in objects.iter().map_err(backend)? {
                let (k, _) = item.map_err(backend)?;
                out.push(k.value().to_string());
            }
            Ok(out)
        })
        .await
    }

    async fn commit_offsets(&self, group: &str, offsets: Vec<CommittedOffset>) -> Result<()> {
        let group = group.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut table = txn.open_table(GROUP_OFFSETS).map_err(backend)?;
                for o in &offsets {
                    table
                        .insert(
                            (group.as_str(), o.topic.as_str(), o.partition),
                            encode(o)?.as_slice(),
                        )
                        .map_err(backend)?;
                }
            }
            txn.commit().map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn fetch_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>> {
        let group = group.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(GROUP_OFFSETS).map_err(backend)?;
            let end = format!("{group}\0");
            let mut out = Vec::new();
            for item in table
                .range((group.as_str(), "", i32::MIN)..(end.as_str(), "", i32::MIN))
                .map_err(backend)?
            {
                let (_, v) = item.map_err(backend)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_offsets(
        &self,
        group: &str,
        partitions: Option<Vec<(String, weir_common::PartitionIndex)>>,
    ) -> Result<usize> {
        let group = group.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let mut deleted = 0;
            {
                let mut table = txn.open_table(GROUP_OFFSETS).map_err(backend)?;
                match partitions {
                    Some(list) => {
                        for (topic, p) in list {
                            if table
                                .remove((group.as_str(), topic.as_str(), p))
                                .map_err(backend)?
                                .is_some()
                            {
                                deleted += 1;
                            }
                        }
                    }
                    None => {
                        let end = format!("{group}\0");
                        table
                            .retain_in(
                                (group.as_str(), "", i32::MIN)..(end.as_str(), "", i32::MIN),
                                |_, _| {
                                    deleted += 1;
                                    false
                                },
                            )
                            .map_err(backend)?;
                    }
                }
            }
            txn.commit().map_err(backend)?;
            Ok(deleted)
        })
        .await
    }

    async fn offset_groups(&self) -> Result<Vec<String>> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(GROUP_OFFSETS).map_err(backend)?;
            let mut out: Vec<String> = Vec::new();
            for item in table.iter().map_err(backend)? {
                let (k, _) = item.map_err(backend)?;
                let group = k.value().0;
                if out.last().map(String::as_str) != Some(group) {
                    out.push(group.to_string());
                }
            }
            Ok(out)
        })
        .await
    }

    async fn record_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (ns, key) = (namespace.to_string(), key.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(RECORDS).map_err(backend)?;
            let value = table.get((ns.as_str(), key.as_str())).map_err(backend)?;
            Ok(value.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn record_put(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        create_only: bool,
    ) -> Result<()> {
        let (ns, key) = (namespace.to_string(), key.to_string());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut table = txn.open_table(RECORDS).map_err(backend)?;
                if create_only
                    && table
                        .get((ns.as_str(), key.as_str()))
                        .map_err(backend)?
                        .is_some()
                {
                    return Err(MetadataError::RecordExists(format!("{ns}/{key}")));
                }
                table
                    .insert((ns.as_str(), key.as_str()), value.as_slice())
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn record_delete(&self, namespace: &str, key: &str) -> Result<bool> {
        let (ns, key) = (namespace.to_string(), key.to_string());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let existed = {
                let mut table = txn.open_table(RECORDS).map_err(backend)?;
                let removed = table.remove((ns.as_str(), key.as_str())).map_err(backend)?;
                removed.is_some()
            };
            txn.commit().map_err(backend)?;
            Ok(existed)
        })
        .await
    }

    async fn record_list(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let ns = namespace.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(RECORDS).map_err(backend)?;
            let end = format!("{ns}\0");
            let mut out = Vec::new();
            for item in table
                .range((ns.as_str(), "")..(end.as_str(), ""))
                .map_err(backend)?
            {
                let (k, v) = item.map_err(backend)?;
                out.push((k.value().1.to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }
}
