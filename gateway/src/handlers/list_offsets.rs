//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), earliest local (-4) and by
//! timestamp (the first offset whose record timestamp is at or after it).

use super::code;
use crate::batch;
use crate::broker::PartitionLog;
use crate::Gateway;
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;
use weir_common::IndexEntry;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

pub async fn handle(
    gw: &Arc<Gateway>,
    version: i16,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::new();
    for t in req.topics {
        let topic = gw.registry.topic(&t.name.0);
        let mut partitions = Vec::new();
        for p in t.partitions {
            let mut resp = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let Some(log) = topic.as_ref().and_then(|t| t.partition(p.partition_index)) else {
                partitions.push(resp.with_error_code(code(ResponseError::UnknownTopicOrPartition)));
                continue;
            };
            let (hw, start, epoch, led) = {
                let s = log.lock();
                (s.high_watermark, s.log_start, s.leader_epoch, s.led)
            };
            if !led {
                partitions.push(resp.with_error_code(code(ResponseError::NotLeaderOrFollower)));
                continue;
            }
            let found = match p.timestamp {
                LATEST | LATEST_TIERED => Ok(Some((-1, hw))),
                EARLIEST | EARLIEST_LOCAL => Ok(Some((-1, start))),
                MAX_TIMESTAMP => max_timestamp(gw, &log, start).await,
                ts if ts >= 0 => by_timestamp(gw, &log, ts, start, hw).await,
                _ => Err(ResponseError::InvalidRequest),
            };
            match found {
                Ok(Some((timestamp, offset))) => {
                    resp = resp.with_timestamp(timestamp).with_offset(offset);
                    if version >= 4 {
                        resp = resp.with_leader_epoch(epoch);
                    }
                }
                Ok(None) => {}
                Err(e) => resp = resp.with_error_code(code(e)),
            }
            partitions.push(resp);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// (timestamp, offset) of the first record at or after `ts`; None when every record is older.
async fn by_timestamp(
    gw: &Gateway,
    log: &PartitionLog,
    ts: i64,
    start: i64,
    hw: i64,
) -> Result<Option<(i64, i64)>, ResponseError> {
    let entry = gw
        .meta
        .index_for_timestamp(log.tp, ts)
        .await
        .map_err(|_| ResponseError::KafkaStorageError)?;
    let Some(entry) = entry else { return Ok(None) };
    if entry.base_offset >= hw {
        return Ok(None);
    }
    find_in_entry(gw, &entry, start, |t| t >= ts).await
}

async fn max_timestamp(
    gw: &Gateway,
    log: &PartitionLog,
    start: i64,
) -> Result<Option<(i64, i64)>, ResponseError> {
    let entry = gw
        .meta
        .index_max_timestamp(log.tp)
        .await
        .map_err(|_| ResponseError::KafkaStorageError)?;
    let Some(entry) = entry else { return Ok(None) };
    let target = entry.max_timestamp;
    find_in_entry(gw, &entry, start, |t| t >= target).await
}

/// The first record (at or after `start`) in the entry whose timestamp satisfies `hit`.
///
/// Record timestamps are read from the record framing (compressed batches are decompressed
/// with a cap, so an untrusted batch cannot be a decompression bomb).
async fn find_in_entry(
    gw: &Gateway,
    entry: &IndexEntry,
    start: i64,
    hit: impl Fn(i64) -> bool,
) -> Result<Option<(i64, i64)>, ResponseError> {
    let bytes = gw
        .storage
        .read(entry.tp, &entry.object, entry.position, entry.length)
        .await
        .map_err(|_| ResponseError::KafkaStorageError)?;
    for (pos, h) in batch::headers(&bytes) {
        if h.last_offset() < start || !hit(h.max_timestamp) {
            continue;
        }
        let log_append_time = h.attributes & 0x08 != 0;
        if log_append_time {
            return Ok(Some((h.max_timestamp, h.base_offset.max(start))));
        }
        let times = batch::record_times(&bytes[pos..pos + h.size], &h);
        if let Some(&(offset, ts)) = times.iter().find(|(o, t)| *o >= start && hit(*t)) {
            return Ok(Some((ts, offset)));
        }
    }
    Ok(None)
}
