//! The object layout: verbatim Kafka v2 record batches grouped by partition, then a footer.
//!
//! ```text
//! [batches of partition A][batches of partition B]...[footer][footer_len: u32][magic: "WEIRSEG1"]
//! footer = version: u8, count: u32, count x entry, crc32c(footer bytes before it): u32
//! entry  = topic id: u128, partition: i32, base offset: i64, last offset: i64,
//!          max timestamp: i64, position: u64, length: u32, batches: u32        (60 bytes)
//! ```
//! All integers big-endian. The footer makes an object self-describing: the offset index can
//! be rebuilt from objects alone, and a reader can check that a range belongs to a partition.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use weir_common::{IndexEntry, TopicId, TopicPartition};

pub const MAGIC: &[u8; 8] = b"WEIRSEG1";
const VERSION: u8 = 1;
const ENTRY_LEN: usize = 60;

/// One partition's range inside an object, as the footer records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FooterEntry {
    pub tp: TopicPartition,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub position: u64,
    pub length: u32,
    pub batches: u32,
}

impl FooterEntry {
    /// The offset-index entry for this range of object `object`.
    pub fn to_index_entry(&self, object: &str) -> IndexEntry {
        IndexEntry {
            tp: self.tp,
            base_offset: self.base_offset,
            last_offset: self.last_offset,
            max_timestamp: self.max_timestamp,
            object: object.to_string(),
            position: self.position,
            length: self.length,
            batches: self.batches,
        }
    }
}

/// Why an object could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FooterError {
    #[error("object too short for a footer")]
    TooShort,
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported footer version {0}")]
    Version(u8),
    #[error("footer checksum mismatch")]
    Checksum,
    #[error("footer entry out of bounds")]
    OutOfBounds,
}

/// Appends the footer for `entries` to `buf` (which holds the data the entries point into).
pub fn write_footer(buf: &mut BytesMut, entries: &[FooterEntry]) {
    let start = buf.len();
    buf.put_u8(VERSION);
    buf.put_u32(entries.len() as u32);
    for e in entries {
        buf.put_u128(e.tp.topic_id.as_u128());
        buf.put_i32(e.tp.partition);
        buf.put_i64(e.base_offset);
        buf.put_i64(e.last_offset);
        buf.put_i64(e.max_timestamp);
        buf.put_u64(e.position);
        buf.put_u32(e.length);
        buf.put_u32(e.batches);
    }
    let crc = crc32c::crc32c(&buf[start..]);
    buf.put_u32(crc);
    let footer_len = (buf.len() - start) as u32;
    buf.put_u32(footer_len);
    buf.put_slice(MAGIC);
}

/// Parses the footer of a whole object.
pub fn read_footer(object: &Bytes) -> Result<Vec<FooterEntry>, FooterError> {
    let n = object.len();
    if n < MAGIC.len() + 4 {
        return Err(FooterError::TooShort);
    }
    if &object[n - MAGIC.len()..] != MAGIC {
        return Err(FooterError::BadMagic);
    }
    let mut len_bytes = &object[n - MAGIC.len() - 4..n - MAGIC.len()];
    let footer_len = len_bytes.get_u32() as usize;
    let footer_end = n - MAGIC.len() - 4;
    if footer_len < 9 || footer_len > footer_end {
        return Err(FooterError::TooShort);
    }
    let footer = &object[footer_end - footer_len..footer_end];
    let (body, mut crc_bytes) = footer.split_at(footer_len - 4);
    if crc32c::crc32c(body) != crc_bytes.get_u32() {
        return Err(FooterError::Checksum);
    }
    let mut body = body;
    let version = body.get_u8();
    if version != VERSION {
        return Err(FooterError::Version(version));
    }
    let count = body.get_u32() as usize;
    if body.remaining() != count.saturating_mul(ENTRY_LEN) {
        return Err(FooterError::OutOfBounds);
    }
    let data_len = (footer_end - footer_len) as u64;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let e = FooterEntry {
            tp: TopicPartition {
                topic_id: TopicId::from_u128(body.get_u128()),
                partition: body.get_i32(),
            },
            base_offset: body.get_i64(),
            last_offset: body.get_i64(),
            max_timestamp: body.get_i64(),
            position: body.get_u64(),
            length: body.get_u32(),
            batches: body.get_u32(),
        };
        if e.position.saturating_add(u64::from(e.length)) > data_len {
            return Err(FooterError::OutOfBounds);
        }
        entries.push(e);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: i32, position: u64, length: u32) -> FooterEntry {
        FooterEntry {
            tp: TopicPartition {
                topic_id: TopicId::from_u128(0xabcdef),
                partition: p,
            },
            base_offset: 10 * i64::from(p),
            last_offset: 10 * i64::from(p) + 9,
            max_timestamp: 1_700_000_000_000 + i64::from(p),
            position,
            length,
            batches: 2,
        }
    }

    #[test]
    fn footer_round_trips() {
        let mut buf = BytesMut::new();
        buf.put_slice(&[7u8; 30]);
        let entries = vec![entry(0, 0, 10), entry(3, 10, 20)];
        write_footer(&mut buf, &entries);
        let object = buf.freeze();
        assert_eq!(read_footer(&object), Ok(entries));
    }

    #[test]
    fn footer_rejects_corruption() {
        let mut buf = BytesMut::new();
        buf.put_slice(&[7u8; 30]);
        write_footer(&mut buf, &[entry(1, 0, 30)]);
        let good = buf.freeze();
        // Flip one byte inside the footer entries: the checksum must catch it.
        let mut bad = good.to_vec();
        bad[30 + 10] ^= 0xff;
        assert_eq!(read_footer(&Bytes::from(bad)), Err(FooterError::Checksum));
        // Truncations never panic and never parse.
        for cut in 0..good.len() {
            assert!(read_footer(&good.slice(..cut)).is_err());
        }
    }

    #[test]
    fn footer_rejects_ranges_outside_the_data() {
        let mut buf = BytesMut::new();
        buf.put_slice(&[7u8; 30]);
        write_footer(&mut buf, &[entry(1, 20, 11)]);
        assert_eq!(read_footer(&buf.freeze()), Err(FooterError::OutOfBounds));
    }
}
