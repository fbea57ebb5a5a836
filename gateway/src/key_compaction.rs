//! Key compaction's record format half: the [`RecordRewriter`] that the storage service's
//! key compaction ([`weir_storage::maintenance::Compactor::compact_keys`]) uses to keep the
//! latest record of each key of a `cleanup.policy=compact` topic.
//!
//! A run is rewritten keeping a record only if it is its key's latest; tombstones (a null
//! value) whose timestamp is older than `delete.retention.ms` go too; records without a key
//! are kept.
//!
//! Offsets never change: a batch that lost records keeps its base offset, its records their
//! offsets, and the index entry its range, so consumers see offset gaps exactly as Kafka's
//! compacted topics show them. Untouched batches are copied verbatim; a rewritten batch is
//! encoded by `kafka-protocol` with its original compression, producer id, epoch and leader
//! epoch. If every record of a run would go, its last batch is kept, so no entry is empty
//! (Kafka keeps at least the last value of each key; keeping more is allowed).
//!
//! This is the one place Weir decodes stored records. Records were validated on the way in;
//! compressed sections are inflated with a cap, and record counts are checked against the
//! inflated size before the decoder reserves memory for them.

use crate::batch::{self, BatchHeader};
use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};
use weir_storage::maintenance::{LatestKeys, RecordRewriter, Rewritten, MAX_KEYS};

/// Kafka v2 record batches, decoded and re-encoded by `kafka-protocol`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaRecords;

impl RecordRewriter for KafkaRecords {
    fn scan_keys(&self, data: &[u8], latest: &mut LatestKeys) -> Result<(), String> {
        scan_keys(data, latest)
    }

    fn rewrite(
        &self,
        data: &[u8],
        latest: &LatestKeys,
        tombstones_before: i64,
    ) -> Result<Rewritten, String> {
        rewrite(data, latest, tombstones_before)
    }
}
/// Smallest encoded record (length, attributes, deltas, key and value lengths, header count).
const MIN_RECORD_BYTES: usize = 7;

/// The records of one stored batch.
fn decode_batch(bytes: &[u8], header: &BatchHeader) -> Result<(Compression, Vec<Record>), String> {
    let count = usize::try_from(header.records_count).unwrap_or(0);
    let section = bytes.get(batch::HEADER_LEN..).unwrap_or_default();
    let inflated = match header.compression() {
        0 => None,
        codec => Some(
            batch::decompress_records(codec, section, batch::MAX_DECOMPRESSED)
                .ok_or("a compressed batch does not inflate within the cap")?,
        ),
    };
    let room = inflated.as_ref().map_or(section.len(), Vec::len) / MIN_RECORD_BYTES;
    if count > room {
        return Err(format!(
            "batch claims {count} records in {} bytes",
            room * MIN_RECORD_BYTES
        ));
    }
    let mut buf = Bytes::copy_from_slice(bytes);
    let set = match inflated {
        None => RecordBatchDecoder::decode(&mut buf),
        Some(records) => {
            let records = Bytes::from(records);
            RecordBatchDecoder::decode_with_custom_compression(
                &mut buf,
                Some(|_: &mut Bytes, _: Compression| -> anyhow::Result<Bytes> {
                    Ok(records.clone())
                }),
            )
        }
    }
    .map_err(|e| format!("undecodable batch at offset {}: {e}", header.base_offset))?;
    Ok((set.compression, set.records))
}

/// Records every key of `data` (stored batches, ascending) with its latest offset.
fn scan_keys(data: &[u8], latest: &mut LatestKeys) -> Result<(), String> {
    for (start, header) in batch::headers(data) {
        let (_, records) = decode_batch(&data[start..start + header.size], &header)?;
        for r in records {
            if let Some(key) = r.key {
                // A copy: the decoded key points into the whole batch buffer.
                latest.insert(Bytes::copy_from_slice(&key), r.offset);
            }
        }
        if latest.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys"));
        }
    }
    Ok(())
}

/// Rewrites `data` (stored batches, ascending) keeping the records that survive: the latest
/// of each key per `latest`, and tombstones only while newer than `tombstones_before` (ms).
fn rewrite(data: &[u8], latest: &LatestKeys, tombstones_before: i64) -> Result<Rewritten, String> {
    let mut out = BytesMut::with_capacity(data.len());
    let mut batches = 0u32;
    let mut max_timestamp = -1i64;
    let mut removed = 0usize;
    let mut last_batch: Option<(usize, BatchHeader)> = None;
    for (start, header) in batch::headers(data) {
        let bytes = &data[start..start + header.size];
        last_batch = Some((start, header));
        let (compression, records) = decode_batch(bytes, &header)?;
        let total = records.len();
        let keep: Vec<Record> = records
            .into_iter()
            .filter(|r| match &r.key {
                None => true,
                Some(k) => {
                    latest.get(k) == Some(&r.offset)
                        && !(r.value.is_none() && r.timestamp < tombstones_before)
                }
            })
            .collect();
        removed += total - keep.len();
        if keep.is_empty() {
            continue;
        }
        batches += 1;
        max_timestamp = max_timestamp.max(header.max_timestamp);
        if keep.len() == total {
            out.extend_from_slice(bytes);
            continue;
        }
        let keep = with_batch_sequences(keep, &header);
        RecordBatchEncoder::encode(
            &mut out,
            &keep,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .map_err(|e| format!("re-encoding batch at offset {}: {e}", header.base_offset))?;
    }
    if batches == 0 {
        // Nothing survives: keep the last batch as it was, so the entry is not empty.
        if let Some((start, header)) = last_batch {
            out.extend_from_slice(&data[start..start + header.size]);
            batches = 1;
            max_timestamp = header.max_timestamp;
            removed = removed.saturating_sub(usize::try_from(header.records_count).unwrap_or(0));
        }
    }
    Ok(Rewritten {
        data: out.freeze(),
        batches,
        max_timestamp,
        records_removed: removed,
    })
}

/// Sequence numbers the encoder turns back into the batch's own base sequence: kept as
/// decoded for idempotent batches (base sequence + offset delta), and made to encode as -1
/// (no sequence) for the others.
fn with_batch_sequences(mut records: Vec<Record>, header: &BatchHeader) -> Vec<Record> {
    if header.is_idempotent() {
        return records;
    }
    let first = records.first().map_or(0, |r| r.offset);
    for r in &mut records {
        r.sequence = i32::try_from(r.offset - first).unwrap_or(0).wrapping_sub(1);
    }
    records
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kafka_protocol::records::TimestampType;
    use std::collections::HashMap;

    fn record(offset: i64, key: Option<&str>, value: Option<&str>) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 3,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 1_000 + offset,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
        }
    }

    /// One batch of `records` as a non-idempotent producer writes it.
    fn encode(records: &[Record], compression: Compression) -> BytesMut {
        let first = records[0].offset;
        let records: Vec<Record> = records
            .iter()
            .map(|r| Record {
                sequence: (r.offset - first) as i32 - 1,
                ..r.clone()
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf
    }

    fn all_records(data: &[u8]) -> Vec<(i64, Option<Bytes>, Option<Bytes>)> {
        let mut out = Vec::new();
        for (start, h) in batch::headers(data) {
            let (_, records) = decode_batch(&data[start..start + h.size], &h).unwrap();
            out.extend(records.into_iter().map(|r| (r.offset, r.key, r.value)));
        }
        out
    }

    #[test]
    fn keeps_the_latest_record_of_each_key_at_its_offset() {
        // Two batches (one gzip) with keys a, b, c; a third batch, later in the log, with a
        // newer a.
        let mut data = encode(
            &[
                record(0, Some("a"), Some("a0")),
                record(1, Some("b"), Some("b1")),
                record(2, None, Some("nokey")),
            ],
            Compression::None,
        );
        data.extend_from_slice(&encode(
            &[
                record(3, Some("b"), Some("b3")),
                record(4, Some("c"), None), // a tombstone
                record(5, Some("c"), Some("c5")),
                record(6, Some("d"), None), // a tombstone, latest of d
            ],
            Compression::Gzip,
        ));
        let later = encode(&[record(7, Some("a"), Some("a7"))], Compression::None);
        let mut latest = HashMap::new();
        scan_keys(&data, &mut latest).unwrap();
        scan_keys(&later, &mut latest).unwrap();
        assert_eq!(latest.len(), 4);

        // Tombstones still young: d's stays.
        let out = rewrite(&data, &latest, 0).unwrap();
        let kept: Vec<i64> = all_records(&out.data).iter().map(|r| r.0).collect();
        assert_eq!(kept, vec![2, 3, 5, 6]);
        assert_eq!(out.records_removed, 3);
        assert_eq!(out.batches, 2);
        // Every batch is well formed: CRC, magic, and a base offset at its first record.
        for (start, h) in batch::headers(&out.data) {
            let b = &out.data[start..start + h.size];
            assert_eq!(crc32c::crc32c(&b[batch::CRC_START..]), h.crc);
            assert_eq!(h.base_offset, if start == 0 { 2 } else { 3 });
            assert!(!h.is_idempotent() && h.base_sequence == -1, "{h:?}");
        }
        // The gzip batch stays gzip.
        let second = batch::headers(&out.data).nth(1).unwrap().1;
        assert_eq!(second.compression(), 1);

        // Old tombstones go.
        let out = rewrite(&data, &latest, 10_000).unwrap();
        let kept: Vec<i64> = all_records(&out.data).iter().map(|r| r.0).collect();
        assert_eq!(kept, vec![2, 3, 5]);

        // A run where nothing survives keeps its last batch.
        let out = rewrite(&later[..], &HashMap::new(), 0).unwrap();
        assert_eq!(out.data.len(), later.len());
        assert_eq!(out.batches, 1);
    }

    #[test]
    fn refuses_record_counts_the_bytes_cannot_hold() {
        let mut data = encode(&[record(0, Some("a"), Some("a"))], Compression::None);
        // records_count sits at byte 57..61 of the batch.
        data[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
        let h = batch::parse_header(&data).unwrap();
        assert!(decode_batch(&data, &h).is_err());
    }
}
