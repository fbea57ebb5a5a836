//! Object maintenance: segment compaction, key compaction, retention and the orphan sweep.
//!
//! The storage service owns objects, so what rewrites, drops or deletes them lives here. The
//! gateway only decides *which* partitions (those it leads) and when, and supplies what this
//! crate cannot know: the partition's log start and high watermark, its topic's policy, and,
//! for key compaction, a [`RecordRewriter`] that decodes and re-encodes Kafka records (the
//! gateway owns the Kafka format).
//!
//! Segment compaction: runs of small flush entries (one per flush object) are copied by the
//! storage service into one per-partition segment object, then the offset index is switched
//! to the segment in one conditional metadata transaction. The replaced objects are deleted
//! after a grace period, so that reads that already resolved an old entry finish.
//!
//! Compaction never changes offsets, bytes or their order: the segment holds the same record
//! batches, verbatim, so a consumer reading across a switch sees the same log. A switch that
//! lost a race (retention, DeleteRecords, a new leader) is refused and its segment deleted.
//! Retention then drops whole segments.
//!
//! Key compaction (`cleanup.policy=compact`) is the same switch, with runs rewritten by the
//! [`RecordRewriter`] to their keys' latest records; see [`Compactor::compact_keys`].

use crate::{object_written_at, SegmentInfo, Storage, CLEAN_SEGMENT_SUFFIX};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use weir_common::clock::Clock;
use weir_common::{IndexEntry, Offset, TopicPartition};
use weir_metadata_api::{MetadataStore, RetentionLimits};

/// When and what to compact.
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// How often each partition is looked at; zero turns compaction off.
    pub interval: Duration,
    /// Target segment size: runs are merged up to this many bytes, and entries of at least
    /// half of it are left alone.
    pub segment_bytes: usize,
    /// Only objects at least this old are merged (the tail stays in the flush objects that
    /// the caches hold).
    pub min_age: Duration,
    /// How long replaced objects stay readable after the switch.
    pub grace: Duration,
    /// Most entries merged into one segment.
    pub max_inputs: usize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            interval: Duration::from_secs(60),
            segment_bytes: 8 << 20,
            min_age: Duration::from_secs(60),
            grace: Duration::from_secs(60),
            max_inputs: 32,
        }
    }
}

/// Index entries read per partition and page.
const ENTRIES_PER_PASS: usize = 1024;

/// Most bytes of one partition a key-compaction pass reads (the key map covers the whole
/// log); larger partitions are skipped with a warning.
pub const MAX_KEY_COMPACTION_LOG_BYTES: u64 = 1 << 30;

/// Most distinct keys one key-compaction pass tracks.
pub const MAX_KEYS: usize = 4_000_000;

/// Each key of a partition mapped to the offset of its latest record.
pub type LatestKeys = HashMap<Bytes, Offset>;

/// A run of record batches after key compaction.
#[derive(Debug)]
pub struct Rewritten {
    pub data: Bytes,
    pub batches: u32,
    pub max_timestamp: i64,
    pub records_removed: usize,
}

/// What key compaction needs of the record format (the gateway decodes Kafka records).
pub trait RecordRewriter: Send + Sync {
    /// Records every key of `data` (stored batches, ascending) with its latest offset; fails
    /// past [`MAX_KEYS`] keys.
    fn scan_keys(&self, data: &[u8], latest: &mut LatestKeys) -> Result<(), String>;

    /// Rewrites `data` (stored batches, ascending) keeping the records that survive: the
    /// latest of each key per `latest`, and tombstones only while newer than
    /// `tombstones_before` (ms). Offsets never change.
    fn rewrite(
        &self,
        data: &[u8],
        latest: &LatestKeys,
        tombstones_before: i64,
    ) -> Result<Rewritten, String>;
}

/// A partition as its leader sees it when a pass starts.
#[derive(Debug, Clone, Copy)]
pub struct PartitionLog {
    pub tp: TopicPartition,
    pub log_start: Offset,
    pub high_watermark: Offset,
}

/// A compacted topic's settings that key compaction honours.
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    /// `min.cleanable.dirty.ratio`, in thousandths.
    pub min_cleanable_dirty_permille: u32,
    /// `min.compaction.lag.ms`.
    pub min_compaction_lag_ms: i64,
    /// `delete.retention.ms`: how long tombstones stay.
    pub delete_retention_ms: i64,
}

/// The runs worth merging in `entries` (ascending, contiguous): consecutive entries each
/// under half a segment, whose objects were written before `cutoff_ms`, at most
/// `segment_bytes` and `max_inputs` per run, two entries or more.
pub fn plan(
    entries: &[IndexEntry],
    segment_bytes: usize,
    max_inputs: usize,
    cutoff_ms: i64,
) -> Vec<Vec<IndexEntry>> {
    let mut runs = Vec::new();
    let mut run: Vec<IndexEntry> = Vec::new();
    let mut bytes = 0usize;
    let finish = |run: &mut Vec<IndexEntry>, runs: &mut Vec<Vec<IndexEntry>>| {
        if run.len() >= 2 {
            runs.push(std::mem::take(run));
        } else {
            run.clear();
        }
    };
    for e in entries {
        let small = (e.length as usize) < segment_bytes / 2;
        let old = object_written_at(&e.object).is_none_or(|at| at < cutoff_ms);
        let follows = run
            .last()
            .is_none_or(|l| l.last_offset + 1 == e.base_offset);
        if !(small && old && follows) {
            finish(&mut run, &mut runs);
            bytes = 0;
            if !(small && old) {
                continue;
            }
        }
        if bytes + e.length as usize > segment_bytes || run.len() >= max_inputs {
            finish(&mut run, &mut runs);
            bytes = 0;
        }
        bytes += e.length as usize;
        run.push(e.clone());
    }
    finish(&mut run, &mut runs);
    runs
}

/// Compacts partitions' objects and switches their index entries.
#[derive(Clone)]
pub struct Compactor {
    storage: Arc<dyn Storage>,
    meta: Arc<dyn MetadataStore>,
    config: CompactionConfig,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Compactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compactor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Compactor {
    /// A compactor whose ages (`min.compaction.lag.ms`, `delete.retention.ms`) run on
    /// `clock`.
    pub fn new(
        storage: Arc<dyn Storage>,
        meta: Arc<dyn MetadataStore>,
        config: CompactionConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Compactor {
            storage,
            meta,
            config,
            clock,
        }
    }

    pub fn config(&self) -> &CompactionConfig {
        &self.config
    }

    /// The write time (ms) before which objects are old enough to merge, now.
    pub fn cutoff(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(i64::try_from(self.config.min_age.as_millis()).unwrap_or(i64::MAX))
    }

    /// Segment compaction of one partition: merges runs of old, small entries below the
    /// high watermark. `switched` hears each segment the index now holds (the caller's
    /// cached index follows). Returns how many segments were switched in.
    pub async fn compact_partition(
        &self,
        log: PartitionLog,
        cutoff: i64,
        switched: &(dyn Fn(&IndexEntry) + Sync),
    ) -> Result<usize, String> {
        let entries: Vec<IndexEntry> = self
            .meta
            .index_from(log.tp, log.log_start, ENTRIES_PER_PASS)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|e| e.last_offset < log.high_watermark)
            .collect();
        let mut count = 0;
        let runs = plan(
            &entries,
            self.config.segment_bytes,
            self.config.max_inputs,
            cutoff,
        );
        for run in runs {
            let segment = self
                .storage
                .compact(log.tp, run.clone())
                .await
                .map_err(|e| e.to_string())?;
            if !self.switch(log.tp, run, segment, switched).await? {
                break;
            }
            count += 1;
        }
        Ok(count)
    }

    /// Switches the index from `run` to `segment`; false when the switch was refused (the
    /// entries changed first) and the segment deleted.
    async fn switch(
        &self,
        tp: TopicPartition,
        run: Vec<IndexEntry>,
        segment: IndexEntry,
        switched: &(dyn Fn(&IndexEntry) + Sync),
    ) -> Result<bool, String> {
        let inputs = run.len();
        match self.meta.replace_index(tp, run, segment.clone()).await {
            Ok(Some(dead)) => {
                switched(&segment);
                tracing::debug!(?tp, inputs, bytes = segment.length,
                    segment = %segment.object, "compacted");
                if !dead.is_empty() {
                    let storage = self.storage.clone();
                    let grace = self.config.grace;
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        storage.delete_objects(dead).await;
                    });
                }
                Ok(true)
            }
            Ok(None) => {
                // Retention, a truncation or a new leader changed the entries first:
                // nothing refers to the segment.
                self.storage.delete_objects(vec![segment.object]).await;
                Ok(false)
            }
            // The outcome is unknown: the segment stays (the orphan sweep removes it if the
            // switch did not land).
            Err(e) => Err(e.to_string()),
        }
    }

    /// Key compaction of one partition of a `cleanup.policy=compact` topic, when at least
    /// `min.cleanable.dirty.ratio` of its bytes are not in clean segments yet:
    /// 1. read the whole log below the high watermark and map each key to its latest offset;
    /// 2. rewrite runs of closed entries (objects older than the compaction age and
    ///    `min.compaction.lag.ms`) with `rewriter`;
    /// 3. write each rewritten run as a clean segment and switch the index to it with the
    ///    same conditional transaction as segment compaction.
    ///
    /// Returns how many clean segments were switched in.
    pub async fn compact_keys(
        &self,
        log: PartitionLog,
        policy: KeyPolicy,
        cutoff: i64,
        rewriter: &dyn RecordRewriter,
        switched: &(dyn Fn(&IndexEntry) + Sync),
    ) -> Result<usize, String> {
        let tp = log.tp;
        // The whole log below the high watermark.
        let mut entries: Vec<IndexEntry> = Vec::new();
        let mut from = log.log_start;
        loop {
            let page = self
                .meta
                .index_from(tp, from, ENTRIES_PER_PASS)
                .await
                .map_err(|e| e.to_string())?;
            let full = page.len() == ENTRIES_PER_PASS;
            let before = entries.len();
            entries.extend(
                page.into_iter()
                    .filter(|e| e.last_offset < log.high_watermark),
            );
            match entries.last() {
                Some(last) if full && entries.len() > before => from = last.last_offset + 1,
                _ => break,
            }
        }
        let total: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
        let dirty: u64 = entries
            .iter()
            .filter(|e| !e.object.ends_with(CLEAN_SEGMENT_SUFFIX))
            .map(|e| u64::from(e.length))
            .sum();
        if total == 0 || dirty * 1000 < u64::from(policy.min_cleanable_dirty_permille) * total {
            return Ok(0);
        }
        if total > MAX_KEY_COMPACTION_LOG_BYTES {
            tracing::warn!(
                ?tp,
                bytes = total,
                "partition too large for key compaction; skipped"
            );
            return Ok(0);
        }
        let mut latest = LatestKeys::new();
        for e in &entries {
            let bytes = self
                .storage
                .read(tp, &e.object, e.position, e.length)
                .await
                .map_err(|e| e.to_string())?;
            rewriter.scan_keys(&bytes, &mut latest)?;
        }
        // Now, after the scan (a large partition takes a while to read).
        let now_ms = self.clock.now_ms();
        let closed_before = cutoff.min(now_ms.saturating_sub(policy.min_compaction_lag_ms));
        let tombstones_before = now_ms.saturating_sub(policy.delete_retention_ms);
        let closed: Vec<IndexEntry> = entries
            .into_iter()
            .take_while(|e| object_written_at(&e.object).is_none_or(|at| at < closed_before))
            .collect();
        let mut count = 0;
        let mut rest = closed.as_slice();
        while !rest.is_empty() {
            // A run: up to max_inputs entries and segment_bytes of input.
            let mut n = 0;
            let mut bytes = 0usize;
            while n < rest.len()
                && n < self.config.max_inputs
                && (n == 0 || bytes + rest[n].length as usize <= self.config.segment_bytes)
            {
                bytes += rest[n].length as usize;
                n += 1;
            }
            let (run, tail) = rest.split_at(n);
            rest = tail;
            let mut data = bytes::BytesMut::with_capacity(bytes);
            for e in run {
                let b = self
                    .storage
                    .read(tp, &e.object, e.position, e.length)
                    .await
                    .map_err(|e| e.to_string())?;
                data.extend_from_slice(&b);
            }
            let rewritten = rewriter.rewrite(&data, &latest, tombstones_before)?;
            let clean = run.iter().all(|e| e.object.ends_with(CLEAN_SEGMENT_SUFFIX));
            if rewritten.records_removed == 0 && (clean || run.len() == 1) {
                continue;
            }
            let (Some(first), Some(last)) = (run.first(), run.last()) else {
                continue;
            };
            let info = SegmentInfo {
                base_offset: first.base_offset,
                last_offset: last.last_offset,
                max_timestamp: rewritten.max_timestamp,
                batches: rewritten.batches,
            };
            let segment = self
                .storage
                .write_segment(tp, info, rewritten.data)
                .await
                .map_err(|e| e.to_string())?;
            if !self.switch(tp, run.to_vec(), segment, switched).await? {
                break;
            }
            count += 1;
        }
        Ok(count)
    }
}

/// What retention did to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// The new log start offset.
    pub log_start: Offset,
    /// Index entries dropped (zero: nothing changed).
    pub removed_entries: usize,
}

/// Applies `limits` to one partition: drops the whole entries below them from the index
/// (one conditional metadata transaction), tells `truncated` the new log start (so the
/// leader stops serving the dropped offsets), and only then deletes the objects nothing
/// refers to any more.
pub async fn apply_retention(
    meta: &dyn MetadataStore,
    storage: &dyn Storage,
    tp: TopicPartition,
    limits: RetentionLimits,
    truncated: &(dyn Fn(Offset) + Sync),
) -> Result<Retained, String> {
    let t = meta
        .apply_retention(tp, limits)
        .await
        .map_err(|e| e.to_string())?;
    if t.removed_entries > 0 {
        truncated(t.log_start_offset);
        storage.delete_objects(t.dead_objects).await;
    }
    Ok(Retained {
        log_start: t.log_start_offset,
        removed_entries: t.removed_entries,
    })
}

/// Deletes objects no index entry refers to (written, but their commit never landed: a
/// crash, a lost answer) that are older than `min_age`; returns how many. Objects younger
/// than that may still be between their write and their index commit.
pub async fn sweep_orphans(
    meta: &dyn MetadataStore,
    storage: &dyn Storage,
    min_age: Duration,
    now_ms: i64,
) -> Result<usize, weir_metadata_api::MetadataError> {
    // Live objects first: an object committed after this read is younger than `min_age`
    // (unless `min_age` is zero, which only start-up uses, when nothing is in flight).
    let live: HashSet<String> = meta.live_objects().await?.into_iter().collect();
    let cutoff = now_ms.saturating_sub(i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX));
    let listed = match storage.list_objects().await {
        Ok(objects) => objects,
        Err(e) => {
            // Orphans are only wasted space: carry on without sweeping them.
            tracing::warn!(error = %e, "cannot list objects; orphaned objects are left for the next sweep");
            return Ok(0);
        }
    };
    let orphans: Vec<String> = listed
        .into_iter()
        .filter(|o| !live.contains(o))
        .filter(|o| object_written_at(o).is_none_or(|at| at < cutoff))
        .collect();
    let count = orphans.len();
    if count > 0 {
        tracing::info!(count, "deleting objects no index entry refers to");
        storage.delete_objects(orphans).await;
    }
    Ok(count)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(base: i64, last: i64, length: u32, written_at: i64) -> IndexEntry {
        IndexEntry {
            tp: TopicPartition {
                topic_id: weir_common::TopicId::from_u128(1),
                partition: 0,
            },
            base_offset: base,
            last_offset: last,
            max_timestamp: 0,
            object: format!("data/{written_at:013}-x{base}.wseg"),
            position: 0,
            length,
            batches: 1,
        }
    }

    fn bases(runs: &[Vec<IndexEntry>]) -> Vec<Vec<i64>> {
        runs.iter()
            .map(|r| r.iter().map(|e| e.base_offset).collect())
            .collect()
    }

    #[test]
    fn plans_runs_of_old_small_entries() {
        let entries = vec![
            entry(0, 9, 100, 1),
            entry(10, 19, 100, 1),
            entry(20, 29, 600, 1), // a big one: left alone, splits the runs
            entry(30, 39, 100, 1),
            entry(40, 49, 100, 1),
            entry(50, 59, 100, 1),
            entry(60, 69, 100, 5), // too young
            entry(70, 79, 100, 1),
        ];
        let runs = plan(&entries, 1000, 32, 3);
        assert_eq!(bases(&runs), vec![vec![0, 10], vec![30, 40, 50]]);
        // Runs are cut at the segment size and at the input cap.
        let runs = plan(&entries[3..6], 250, 32, 3);
        assert_eq!(bases(&runs), vec![vec![30, 40]]);
        let runs = plan(&entries[3..6], 1000, 2, 3);
        assert_eq!(bases(&runs), vec![vec![30, 40]]);
        // A single entry is never rewritten on its own, and nothing young is touched.
        assert!(plan(&entries[..1], 1000, 32, 3).is_empty());
        assert!(plan(&entries, 1000, 32, 0).is_empty());
    }
}
