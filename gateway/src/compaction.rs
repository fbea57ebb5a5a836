//! Background compaction of the partitions this gateway leads: runs of small flush entries
//! (one per flush object) are copied by the storage service into one per-partition segment
//! object, then the offset index is switched to the segment in one conditional metadata
//! transaction. The replaced objects are deleted after a grace period, so that reads that
//! already resolved an old entry finish.
//!
//! Compaction never changes offsets, bytes or their order: the segment holds the same record
//! batches, verbatim, so a consumer reading across a switch sees the same log. A switch that
//! lost a race (retention, DeleteRecords, a new leader) is refused and its segment deleted.
//! Retention then drops whole segments.
//!
//! Partitions of `cleanup.policy=compact` topics are key-compacted instead
//! ([`crate::key_compaction`]): the same switch, with runs rewritten to their keys' latest
//! records.

use crate::config::TopicSettings;
use crate::key_compaction;
use crate::Gateway;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use weir_common::{IndexEntry, TopicPartition};

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

/// Index entries read per partition and pass.
const ENTRIES_PER_PASS: usize = 1024;

/// The runs worth merging in `entries` (ascending, contiguous): consecutive entries each
/// under half a segment, whose objects were written before `cutoff_ms`, at most
/// `segment_bytes` and `max_inputs` per run, two entries or more.
pub(crate) fn plan(
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
        let old = weir_storage::object_written_at(&e.object).is_none_or(|at| at < cutoff_ms);
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

impl Gateway {
    /// One compaction pass over every partition; returns how many segments were switched in.
    pub async fn compact(self: &Arc<Self>) -> usize {
        let config = &self.config.compaction;
        let cutoff = weir_common::now_ms()
            .saturating_sub(i64::try_from(config.min_age.as_millis()).unwrap_or(i64::MAX));
        let mut switched = 0;
        for topic in self.registry.all() {
            let settings = topic.settings();
            for p in 0..topic.partition_count() {
                // Each partition is compacted by its leader only.
                if !topic.partition(p).is_some_and(|l| l.lock().led) {
                    continue;
                }
                let tp = TopicPartition {
                    topic_id: topic.id,
                    partition: p,
                };
                let pass = if settings.compact_policy {
                    self.compact_keys(tp, &settings, cutoff).await
                } else {
                    self.compact_partition(tp, cutoff).await
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

    async fn compact_partition(
        self: &Arc<Self>,
        tp: TopicPartition,
        cutoff: i64,
    ) -> Result<usize, String> {
        let Some(log) = self.registry.partition(tp) else {
            return Ok(0);
        };
        let (start, hw) = {
            let s = log.lock();
            (s.log_start, s.high_watermark)
        };
        let entries: Vec<IndexEntry> = self
            .meta
            .index_from(tp, start, ENTRIES_PER_PASS)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|e| e.last_offset < hw)
            .collect();
        let config = &self.config.compaction;
        let mut switched = 0;
        for run in plan(&entries, config.segment_bytes, config.max_inputs, cutoff) {
            let segment = self
                .storage
                .compact(tp, run.clone())
                .await
                .map_err(|e| e.to_string())?;
            if !self.switch(tp, run, segment).await? {
                break;
            }
            switched += 1;
        }
        Ok(switched)
    }

    /// Switches the index from `run` to `segment`; false when the switch was refused (the
    /// entries changed first) and the segment deleted.
    async fn switch(
        self: &Arc<Self>,
        tp: TopicPartition,
        run: Vec<IndexEntry>,
        segment: IndexEntry,
    ) -> Result<bool, String> {
        let inputs = run.len();
        match self.meta.replace_index(tp, run, segment.clone()).await {
            Ok(Some(dead)) => {
                self.registry.compacted(tp, &segment);
                tracing::debug!(?tp, inputs, bytes = segment.length,
                    segment = %segment.object, "compacted");
                if !dead.is_empty() {
                    let gateway = self.clone();
                    let grace = self.config.compaction.grace;
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        gateway.storage.delete_objects(dead).await;
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

    /// Key compaction of one partition of a `cleanup.policy=compact` topic (see
    /// [`crate::key_compaction`]); returns how many clean segments were switched in.
    async fn compact_keys(
        self: &Arc<Self>,
        tp: TopicPartition,
        settings: &TopicSettings,
        cutoff: i64,
    ) -> Result<usize, String> {
        let Some(log) = self.registry.partition(tp) else {
            return Ok(0);
        };
        let (start, hw) = {
            let s = log.lock();
            (s.log_start, s.high_watermark)
        };
        // The whole log below the high watermark.
        let mut entries: Vec<IndexEntry> = Vec::new();
        let mut from = start;
        loop {
            let page = self
                .meta
                .index_from(tp, from, ENTRIES_PER_PASS)
                .await
                .map_err(|e| e.to_string())?;
            let full = page.len() == ENTRIES_PER_PASS;
            let before = entries.len();
            entries.extend(page.into_iter().filter(|e| e.last_offset < hw));
            match entries.last() {
                Some(last) if full && entries.len() > before => from = last.last_offset + 1,
                _ => break,
            }
        }
        let total: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
        let dirty: u64 = entries
            .iter()
            .filter(|e| !e.object.ends_with(weir_storage::CLEAN_SEGMENT_SUFFIX))
            .map(|e| u64::from(e.length))
            .sum();
        if total == 0 || dirty * 1000 < u64::from(settings.min_cleanable_dirty_permille) * total {
            return Ok(0);
        }
        if total > key_compaction::MAX_LOG_BYTES {
            tracing::warn!(
                ?tp,
                bytes = total,
                "partition too large for key compaction; skipped"
            );
            return Ok(0);
        }
        let mut latest = HashMap::new();
        for e in &entries {
            let bytes = self
                .storage
                .read(tp, &e.object, e.position, e.length)
                .await
                .map_err(|e| e.to_string())?;
            key_compaction::scan_keys(&bytes, &mut latest)?;
        }
        let now = weir_common::now_ms();
        let closed_before = cutoff.min(now.saturating_sub(settings.min_compaction_lag_ms));
        let tombstones_before = now.saturating_sub(settings.delete_retention_ms);
        let config = &self.config.compaction;
        let closed: Vec<IndexEntry> = entries
            .into_iter()
            .take_while(|e| {
                weir_storage::object_written_at(&e.object).is_none_or(|at| at < closed_before)
            })
            .collect();
        let mut switched = 0;
        let mut rest = closed.as_slice();
        while !rest.is_empty() {
            // A run: up to max_inputs entries and segment_bytes of input.
            let mut n = 0;
            let mut bytes = 0usize;
            while n < rest.len()
                && n < config.max_inputs
                && (n == 0 || bytes + rest[n].length as usize <= config.segment_bytes)
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
            let rewritten = key_compaction::rewrite(&data, &latest, tombstones_before)?;
            let clean = run
                .iter()
                .all(|e| e.object.ends_with(weir_storage::CLEAN_SEGMENT_SUFFIX));
            if rewritten.records_removed == 0 && (clean || run.len() == 1) {
                continue;
            }
            let (Some(first), Some(last)) = (run.first(), run.last()) else {
                continue;
            };
            let info = weir_storage::SegmentInfo {
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
            if !self.switch(tp, run.to_vec(), segment).await? {
                break;
            }
            switched += 1;
        }
        Ok(switched)
    }
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
