//! Record batch headers: validation and in-place offset assignment, without decoding records.
//!
//! A v2 record batch starts with a fixed 61-byte header:
//!
//! ```text
//!  0 base offset i64 | 8 batch length i32 | 12 partition leader epoch i32 | 16 magic i8
//! 17 crc u32 (CRC-32C of bytes 21..end) | 21 attributes i16 | 23 last offset delta i32
//! 27 first timestamp i64 | 35 max timestamp i64 | 43 producer id i64 | 51 producer epoch i16
//! 53 base sequence i32 | 57 records count i32 | 61 records...
//! ```
//!
//! Base offset and leader epoch lie outside the CRC, so assigning offsets patches 12 bytes and
//! leaves the client's checksum valid. Only a `LogAppendTime` topic rewrites a covered field
//! (attributes and max timestamp) and then recomputes the CRC, as Kafka does.

use bytes::{Buf, BytesMut};

pub const HEADER_LEN: usize = 61;
/// Bytes of the header after the batch length field.
const LENGTH_COVERED_HEADER: usize = HEADER_LEN - 12;
pub const CRC_START: usize = 21;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// The header fields Weir reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Total bytes of the batch including the 12-byte offset/length prefix.
    pub size: usize,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn compression(&self) -> i16 {
        self.attributes & ATTR_COMPRESSION_MASK
    }

    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0
    }

    /// The sequence number of the batch's last record (sequences wrap at i32::MAX).
    pub fn last_sequence(&self) -> i32 {
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        (last % (i64::from(i32::MAX) + 1)) as i32
    }
}

/// Why a batch was refused; each maps to the Kafka error code a client expects.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch is truncated or its length is invalid")]
    Corrupt,
    #[error("record batch CRC mismatch")]
    Crc,
    #[error("record batch magic {0} is not supported (only v2)")]
    Magic(i8),
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge { size: usize, max: usize },
    #[error("invalid record batch: {0}")]
    Invalid(&'static str),
}

/// Parses the header at the start of `buf` (which must hold at least the header).
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < HEADER_LEN {
        return Err(BatchError::Corrupt);
    }
    let mut b = buf;
    let base_offset = b.get_i64();
    let length = b.get_i32();
    let _leader_epoch = b.get_i32();
    let magic = b.get_i8();
    let crc = b.get_u32();
    let attributes = b.get_i16();
    let last_offset_delta = b.get_i32();
    let first_timestamp = b.get_i64();
    let max_timestamp = b.get_i64();
    let producer_id = b.get_i64();
    let producer_epoch = b.get_i16();
    let base_sequence = b.get_i32();
    let records_count = b.get_i32();
    if length < LENGTH_COVERED_HEADER as i32 {
        return Err(BatchError::Corrupt);
    }
    Ok(BatchHeader {
        base_offset,
        size: 12 + length as usize,
        magic,
        crc,
        attributes,
        last_offset_delta,
        first_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        records_count,
    })
}

/// A validated batch: where it starts in the record set and its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidBatch {
    pub start: usize,
    pub header: BatchHeader,
}

/// Validates every batch of a produce request's record set: complete, magic 2, CRC-32C,
/// size within `max_batch_bytes`, sane counts, no transactional or control batches.
pub fn validate(records: &[u8], max_batch_bytes: usize) -> Result<Vec<ValidBatch>, BatchError> {
    let mut batches = Vec::new();
    let mut pos = 0;
    if records.is_empty() {
        return Err(BatchError::Invalid("empty record set"));
    }
    while pos < records.len() {
        let rest = &records[pos..];
        if rest.len() < 17 {
            return Err(BatchError::Corrupt);
        }
        let magic = rest[16] as i8;
        if magic != 2 {
            return Err(BatchError::Magic(magic));
        }
        let header = parse_header(rest)?;
        if header.size > rest.len() {
            return Err(BatchError::Corrupt);
        }
        if header.size > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size: header.size,
                max: max_batch_bytes,
            });
        }
        if crc32c::crc32c(&rest[CRC_START..header.size]) != header.crc {
            return Err(BatchError::Crc);
        }
        if header.records_count <= 0 || header.last_offset_delta != header.records_count - 1 {
            return Err(BatchError::Invalid(
                "records count does not match the last offset delta",
            ));
        }
        if header.compression() == 0 {
            // An uncompressed record takes at least 7 bytes: a count beyond that is a lie
            // that would make a later decode reserve memory it cannot fill.
            let room = (header.size - HEADER_LEN) / 7;
            if header.records_count as usize > room {
                return Err(BatchError::Invalid("records count exceeds the batch size"));
            }
        }
        if header.compression() > 4 {
            return Err(BatchError::Invalid("unknown compression codec"));
        }
        if header.attributes & ATTR_CONTROL != 0 {
            return Err(BatchError::Invalid("clients may not write control batches"));
        }
        if header.attributes & ATTR_TRANSACTIONAL != 0 {
            return Err(BatchError::Invalid(
                "transactional batches are not supported",
            ));
        }
        if header.is_idempotent() && header.base_sequence < 0 {
            return Err(BatchError::Invalid(
                "idempotent batch without a base sequence",
            ));
        }
        batches.push(ValidBatch { start: pos, header });
        pos += header.size;
    }
    Ok(batches)
}

/// Writes the assigned base offset and leader epoch into the batch at `start`.
pub fn assign(buf: &mut BytesMut, start: usize, base_offset: i64, leader_epoch: i32) {
    buf[start..start + 8].copy_from_slice(&base_offset.to_be_bytes());
    buf[start + 12..start + 16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Marks the batch at `start` as LogAppendTime with `now` as its max timestamp and fixes
/// the CRC.
pub fn set_log_append_time(buf: &mut BytesMut, start: usize, size: usize, now: i64) {
    let attributes = i16::from_be_bytes([buf[start + 21], buf[start + 22]]) | ATTR_TIMESTAMP_TYPE;
    buf[start + 21..start + 23].copy_from_slice(&attributes.to_be_bytes());
    buf[start + 35..start + 43].copy_from_slice(&now.to_be_bytes());
    let crc = crc32c::crc32c(&buf[start + CRC_START..start + size]);
    buf[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
}

/// Iterates the batch headers of stored (trusted but still checked) record bytes.
pub fn headers(records: &[u8]) -> impl Iterator<Item = (usize, BatchHeader)> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = records.get(pos..)?;
        let header = parse_header(rest).ok()?;
        if header.size > rest.len() {
            return None;
        }
        let start = pos;
        pos += header.size;
        Some((start, header))
    })
}

/// Reads a zigzag varint of at most `max_bytes` bytes.
fn zigzag(buf: &mut &[u8], max_bytes: usize) -> Option<i64> {
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// Largest decompressed record section read for ListOffsets (a batch that inflates beyond it
/// is treated as unreadable rather than allowed to exhaust memory).
pub const MAX_DECOMPRESSED: usize = 64 << 20;

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

fn read_capped(mut reader: impl std::io::Read, cap: usize) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let read = std::io::Read::take(&mut reader, cap as u64 + 1)
        .read_to_end(&mut out)
        .ok()?;
    (read <= cap).then_some(out)
}

fn snappy_block(block: &[u8], budget: &mut usize, out: &mut Vec<u8>) -> Option<()> {
    let len = snap::raw::decompress_len(block).ok()?;
    *budget = budget.checked_sub(len)?;
    out.extend_from_slice(&snap::raw::Decoder::new().decompress_vec(block).ok()?);
    Some(())
}

/// Decompresses a batch's record section (codec from the batch attributes), refusing to
/// produce more than `cap` bytes.
pub fn decompress_records(codec: i16, data: &[u8], cap: usize) -> Option<Vec<u8>> {
    use std::io::Read as _;
    match codec {
        0 => Some(data.to_vec()),
        1 => read_capped(flate2::read::GzDecoder::new(data), cap),
        2 => {
            let mut out = Vec::new();
            let mut budget = cap;
            if data.starts_with(XERIAL_MAGIC) && data.len() >= 16 {
                // snappy-java framing: 16-byte header, then (u32 length, raw block) pairs.
                let mut rest = &data[16..];
                while !rest.is_empty() {
                    let len = rest
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)?;
                    let block = rest.get(4..4 + len)?;
                    snappy_block(block, &mut budget, &mut out)?;
                    rest = &rest[4 + len..];
                }
            } else {
                snappy_block(data, &mut budget, &mut out)?;
            }
            Some(out)
        }
        3 => read_capped(lz4::Decoder::new(data).ok()?, cap),
        4 => {
            let mut decoder = zstd::stream::read::Decoder::new(data).ok()?;
            let mut out = Vec::new();
            let read = (&mut decoder)
                .take(cap as u64 + 1)
                .read_to_end(&mut out)
                .ok()?;
            (read <= cap).then_some(out)
        }
        _ => None,
    }
}

/// The (offset, timestamp) of each record of a batch, read from the record framing only
/// (length, attributes, timestamp delta, offset delta); keys, values and headers are skipped.
/// Compressed batches are decompressed with a cap ([`MAX_DECOMPRESSED`]).
/// `kafka-protocol`'s record decoder is not used because it reserves memory from header counts
/// taken from the wire. Stops at the first malformed record.
pub fn record_times(batch: &[u8], header: &BatchHeader) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    if batch.len() < HEADER_LEN {
        return out;
    }
    let section = &batch[HEADER_LEN..batch.len().min(header.size)];
    let decompressed;
    let mut rest: &[u8] = if header.compression() == 0 {
        section
    } else {
        match decompress_records(header.compression(), section, MAX_DECOMPRESSED) {
            Some(d) => {
                decompressed = d;
                &decompressed
            }
            None => return out,
        }
    };
    for _ in 0..header.records_count {
        let Some(len) = zigzag(&mut rest, 5) else {
            break;
        };
        let Ok(len) = usize::try_from(len) else { break };
        if len > rest.len() || len == 0 {
            break;
        }
        let (mut record, next) = rest.split_at(len);
        rest = next;
        record = &record[1..]; // attributes
        let (Some(ts_delta), Some(offset_delta)) =
            (zigzag(&mut record, 10), zigzag(&mut record, 5))
        else {
            break;
        };
        out.push((
            header.base_offset + offset_delta,
            header.first_timestamp.saturating_add(ts_delta),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    fn encode(n: i64, compression: Compression, producer_id: i64) -> BytesMut {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id,
                producer_epoch: if producer_id >= 0 { 0 } else { -1 },
                timestamp_type: TimestampType::Creation,
                offset: i,
                // Constant offset-sequence distance keeps the encoder from splitting batches.
                sequence: i as i32,
                timestamp: 1_700_000_000_000 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'v'; 50])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        if let Err(e) = RecordBatchEncoder::encode(&mut buf, &records, &options) {
            panic!("encode: {e}");
        }
        buf
    }

    #[test]
    fn validates_a_real_batch_and_keeps_crc_valid_after_assignment() -> Result<(), String> {
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut buf = encode(5, compression, 42);
            let batches = validate(&buf, 1 << 20).map_err(|e| e.to_string())?;
            assert_eq!(batches.len(), 1);
            let h = batches[0].header;
            assert_eq!(
                (h.records_count, h.last_offset_delta, h.producer_id),
                (5, 4, 42)
            );
            assert_eq!((h.base_sequence, h.last_sequence()), (0, 4));
            assign(&mut buf, 0, 1000, 7);
            // Still valid (offset and epoch are outside the CRC) and decodes at the new offsets.
            validate(&buf, 1 << 20).map_err(|e| e.to_string())?;
            let set =
                RecordBatchDecoder::decode(&mut buf.clone().freeze()).map_err(|e| e.to_string())?;
            let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![1000, 1001, 1002, 1003, 1004]);
            assert_eq!(set.records[0].partition_leader_epoch, 7);
        }
        Ok(())
    }

    #[test]
    fn rejects_corruption_truncation_and_oversize() {
        let buf = encode(3, Compression::None, -1);
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        assert_eq!(validate(&bad, 1 << 20), Err(BatchError::Crc));
        for cut in 0..buf.len() {
            assert!(validate(&buf[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            validate(&buf, 10),
            Err(BatchError::TooLarge { .. })
        ));
        let mut old = buf.clone();
        old[16] = 1;
        assert_eq!(validate(&old, 1 << 20), Err(BatchError::Magic(1)));
    }

    #[test]
    fn rejects_lying_record_counts() {
        let mut buf = encode(3, Compression::None, -1);
        // Claim 10 million records (and a matching last offset delta), then fix the CRC.
        buf[57..61].copy_from_slice(&10_000_000i32.to_be_bytes());
        buf[23..27].copy_from_slice(&9_999_999i32.to_be_bytes());
        let crc = crc32c::crc32c(&buf[CRC_START..]);
        buf[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&buf, 1 << 20),
            Err(BatchError::Invalid(_))
        ));
    }

    #[test]
    fn log_append_time_rewrites_timestamp_and_crc() -> Result<(), String> {
        let mut buf = encode(2, Compression::None, -1);
        let size = buf.len();
        set_log_append_time(&mut buf, 0, size, 1_800_000_000_000);
        let batches = validate(&buf, 1 << 20).map_err(|e| e.to_string())?;
        assert_eq!(batches[0].header.max_timestamp, 1_800_000_000_000);
        assert_ne!(batches[0].header.attributes & ATTR_TIMESTAMP_TYPE, 0);
        Ok(())
    }

    #[test]
    fn record_times_match_the_decoder() -> Result<(), String> {
        let mut buf = encode(4, Compression::None, -1);
        assign(&mut buf, 0, 500, 0);
        let h = parse_header(&buf).map_err(|e| e.to_string())?;
        let times = record_times(&buf, &h);
        let set =
            RecordBatchDecoder::decode(&mut buf.clone().freeze()).map_err(|e| e.to_string())?;
        let expected: Vec<(i64, i64)> = set
            .records
            .iter()
            .map(|r| (r.offset, r.timestamp))
            .collect();
        assert_eq!(times, expected);
        assert_eq!(times[0], (500, 1_700_000_000_000));
        // Truncated or lying record framing stops the scan instead of reading past the batch.
        assert!(record_times(&buf[..HEADER_LEN + 3], &h).len() < 4);
        Ok(())
    }

    #[test]
    fn record_times_of_compressed_batches() -> Result<(), String> {
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let buf = encode(5, compression, -1);
            let h = parse_header(&buf).map_err(|e| e.to_string())?;
            let times = record_times(&buf, &h);
            assert_eq!(times.len(), 5, "{compression:?}");
            assert_eq!(times[4], (4, 1_700_000_000_004));
        }
        Ok(())
    }

    #[test]
    fn decompression_is_capped() {
        // 1 MiB of zeros compresses to a few KiB; a 64 KiB cap refuses it.
        let zeros = vec![0u8; 1 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let packed = std::io::Write::write_all(&mut gz, &zeros)
            .ok()
            .and_then(|_| gz.finish().ok())
            .unwrap_or_default();
        assert!(packed.len() < 10_000);
        assert!(decompress_records(1, &packed, 64 << 10).is_none());
        assert_eq!(
            decompress_records(1, &packed, 2 << 20).map(|v| v.len()),
            Some(1 << 20)
        );
        let z = zstd::encode_all(&zeros[..], 19).unwrap_or_default();
        assert!(decompress_records(4, &z, 64 << 10).is_none());
        // A raw snappy block that claims a huge length is refused before any allocation.
        assert!(decompress_records(2, &[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00], 1 << 20).is_none());
    }

    #[test]
    fn several_batches_are_walked_in_order() -> Result<(), String> {
        let mut buf = encode(2, Compression::None, -1);
        let second = encode(3, Compression::Lz4, -1);
        buf.extend_from_slice(&second);
        let batches = validate(&buf, 1 << 20).map_err(|e| e.to_string())?;
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].header.records_count, 3);
        assert_eq!(headers(&buf).count(), 2);
        Ok(())
    }
}
