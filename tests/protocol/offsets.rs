//! Offsets: contiguous assignment, exact bytes back, fetch positions, ListOffsets and
//! DeleteRecords.

use crate::support::*;
use anyhow::{ensure, Result};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
};
use kafka_protocol::ResponseError;

const TOPIC: &str = "offsets";
const BATCHES: i64 = 4;
const PER_BATCH: i64 = 3;
const TOTAL: i64 = BATCHES * PER_BATCH;

/// Record `i` has a distinct key and value and timestamp `T0 + 10 i`.
fn expected(from: i64) -> Vec<(i64, String, String)> {
    (from..TOTAL)
        .map(|i| {
            (
                i,
                format!("key-{i}"),
                format!("value-{i}-{}", "#".repeat(i as usize)),
            )
        })
        .collect()
}

fn fill(c: &mut Client) -> Result<Topic> {
    let topic = create_topic(c, TOPIC, 1, &[])?;
    let all = expected(0);
    for b in 0..BATCHES {
        let recs: Vec<Rec> = all[(b * PER_BATCH) as usize..((b + 1) * PER_BATCH) as usize]
            .iter()
            .map(|(i, k, v)| (k.as_str(), v.as_str(), T0 + 10 * i))
            .collect();
        let base = produce(
            c,
            [3, 5, 9, 11][b as usize],
            -1,
            TOPIC,
            0,
            batch(None, &recs)?,
        )?;
        ensure!(
            base.error_code == 0 && base.base_offset == b * PER_BATCH,
            "batch {b}: {base:?}"
        );
    }
    Ok(topic)
}

#[test]
fn fetch_returns_every_record_at_its_offset() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let topic = fill(&mut c)?;
    for v in [4i16, 7, 11, 12, 13, 16] {
        let data = fetch(&mut c, v, &topic, 0, 0)?;
        ensure!(
            data.error_code == 0 && data.high_watermark == TOTAL,
            "v{v}: {data:?}"
        );
        let records = decode_records(&data.records)?;
        ensure!(
            offsets_keys_values(&records, 0) == expected(0),
            "v{v} from 0: {:?}",
            offsets_keys_values(&records, 0)
        );
        for r in &records {
            ensure!(
                r.timestamp == T0 + 10 * r.offset,
                "v{v}: offset {} has timestamp {}",
                r.offset,
                r.timestamp
            );
        }
        // Inside the second batch: the batch holding it comes back whole, starting at or before it.
        let data = fetch(&mut c, v, &topic, 0, 4)?;
        ensure!(data.error_code == 0, "v{v} at 4: error {}", data.error_code);
        let records = decode_records(&data.records)?;
        ensure!(
            records.first().is_some_and(|r| r.offset <= 4),
            "v{v} at 4 starts at {:?}",
            records.first().map(|r| r.offset)
        );
        ensure!(
            offsets_keys_values(&records, 4) == expected(4),
            "v{v} from 4"
        );
        // At the high watermark: nothing, no error. Beyond it: out of range.
        let data = fetch(&mut c, v, &topic, 0, TOTAL)?;
        ensure!(
            data.error_code == 0 && decode_records(&data.records)?.is_empty(),
            "v{v} at the end: {data:?}"
        );
        let data = fetch(&mut c, v, &topic, 0, TOTAL + 1)?;
        ensure!(
            data.error_code == code(ResponseError::OffsetOutOfRange),
            "v{v} beyond the end: {}",
            data.error_code
        );
        let data = fetch(&mut c, v, &topic, 0, -5)?;
        ensure!(
            data.error_code == code(ResponseError::OffsetOutOfRange),
            "v{v} negative offset: {}",
            data.error_code
        );
    }
    Ok(())
}

/// (offset, timestamp) ListOffsets answers, requiring no error.
fn lookup(c: &mut Client, version: i16, timestamp: i64) -> Result<(i64, i64)> {
    let p = list_offset(c, version, TOPIC, 0, timestamp)?;
    ensure!(
        p.error_code == 0,
        "ListOffsets v{version} at {timestamp}: error {}",
        p.error_code
    );
    Ok((p.offset, p.timestamp))
}

#[test]
fn list_offsets_and_delete_records() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let topic = fill(&mut c)?;
    for v in [1i16, 4, 7, 9] {
        ensure!(lookup(&mut c, v, -2)?.0 == 0, "v{v} earliest");
        ensure!(lookup(&mut c, v, -1)?.0 == TOTAL, "v{v} latest");
        ensure!(
            lookup(&mut c, v, T0)? == (0, T0),
            "v{v} by the first timestamp"
        );
        ensure!(
            lookup(&mut c, v, T0 + 70)? == (7, T0 + 70),
            "v{v} by record 7's timestamp"
        );
        ensure!(
            lookup(&mut c, v, T0 + 75)? == (8, T0 + 80),
            "v{v} between records 7 and 8"
        );
        ensure!(
            lookup(&mut c, v, T0 - 1_000)? == (0, T0),
            "v{v} before every record"
        );
        ensure!(
            lookup(&mut c, v, T0 + 10_000)?.0 == -1,
            "v{v} after every record: no offset"
        );
        if v >= 7 {
            let last = TOTAL - 1;
            ensure!(
                lookup(&mut c, v, -3)? == (last, T0 + 10 * last),
                "v{v} max timestamp"
            );
        }
    }
    let p = list_offset(&mut c, 5, "no-such-topic", 0, -1)?;
    ensure!(
        p.error_code == code(ResponseError::UnknownTopicOrPartition),
        "unknown topic: {}",
        p.error_code
    );

    // DeleteRecords inside the second batch moves the log start to exactly that offset.
    let req = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(topic_name(TOPIC))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(5)])]);
    let resp = c.call(2, &req)?;
    let p = &resp.topics[0].partitions[0];
    ensure!(
        p.error_code == 0 && p.low_watermark == 5,
        "DeleteRecords: {p:?}"
    );
    ensure!(
        lookup(&mut c, 5, -2)?.0 == 5,
        "earliest after DeleteRecords"
    );
    ensure!(
        lookup(&mut c, 5, -1)?.0 == TOTAL,
        "latest after DeleteRecords"
    );
    for v in [4i16, 11, 13] {
        for below in [0, 4] {
            let data = fetch(&mut c, v, &topic, 0, below)?;
            ensure!(
                data.error_code == code(ResponseError::OffsetOutOfRange),
                "v{v} fetch at {below}: {}",
                data.error_code
            );
        }
        let data = fetch(&mut c, v, &topic, 0, 5)?;
        ensure!(data.error_code == 0, "v{v} fetch at 5: {data:?}");
        if v >= 5 {
            ensure!(
                data.log_start_offset == 5,
                "v{v} fetch at 5: log start {}",
                data.log_start_offset
            );
        }
        ensure!(
            offsets_keys_values(&decode_records(&data.records)?, 5) == expected(5),
            "v{v} records from 5"
        );
    }
    // Beyond the high watermark is refused, and the start never moves backwards.
    let req = DeleteRecordsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(topic_name(TOPIC))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(TOTAL + 1)])]);
    let p = c.call(2, &req)?.topics[0].partitions[0].clone();
    ensure!(
        p.error_code == code(ResponseError::OffsetOutOfRange),
        "DeleteRecords beyond the end: {p:?}"
    );
    ensure!(lookup(&mut c, 5, -2)?.0 == 5);
    Ok(())
}

#[test]
fn several_batches_in_one_record_set_and_tiny_fetch_limits() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let topic = create_topic(&mut c, "multi", 1, &[])?;
    // One partition's record set may hold several batches: offsets follow on.
    let mut set = simple_batch(None, 2)?.to_vec();
    set.extend_from_slice(&batch(None, &[("x", "y", T0), ("z", "w", T0)])?);
    set.extend_from_slice(&simple_batch(None, 1)?);
    ensure!(produce_ok(&mut c, "multi", 0, set.into())? == 0);
    ensure!(produce_ok(&mut c, "multi", 0, simple_batch(None, 1)?)? == 5);
    let data = fetch(&mut c, 11, &topic, 0, 0)?;
    let got: Vec<i64> = decode_records(&data.records)?
        .iter()
        .map(|r| r.offset)
        .collect();
    ensure!(got == vec![0, 1, 2, 3, 4, 5], "offsets {got:?}");
    // KIP-74: a limit smaller than the first batch still returns that one batch, and only it.
    for v in [4i16, 11, 16] {
        let mut req = fetch_request(v, &topic, &[(0, 2)]);
        req.topics[0].partitions[0].partition_max_bytes = 1;
        let resp = c.call(v, &req)?;
        let records = decode_records(&resp.responses[0].partitions[0].records)?;
        let got: Vec<i64> = records.iter().map(|r| r.offset).collect();
        ensure!(got == vec![2, 3], "v{v} partition_max_bytes=1: {got:?}");
        let req = fetch_request(v, &topic, &[(0, 2)]).with_max_bytes(1);
        let resp = c.call(v, &req)?;
        let got: Vec<i64> = decode_records(&resp.responses[0].partitions[0].records)?
            .iter()
            .map(|r| r.offset)
            .collect();
        ensure!(got == vec![2, 3], "v{v} max_bytes=1: {got:?}");
    }
    Ok(())
}

/// Four batches of three records, one per codec, timestamps `T0 + 10 * offset`.
fn fill_compressed(c: &mut Client) -> Result<Topic> {
    use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};
    let topic = create_topic(c, "squeezed", 1, &[])?;
    let codecs = [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    for (b, compression) in codecs.into_iter().enumerate() {
        let mut plain = simple_batch(None, 3)?;
        let mut records = kafka_protocol::records::RecordBatchDecoder::decode(&mut plain)?.records;
        for (i, r) in records.iter_mut().enumerate() {
            r.timestamp = T0 + 10 * (3 * b + i) as i64;
        }
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )?;
        ensure!(
            produce_ok(c, "squeezed", 0, buf.freeze())? == 3 * b as i64,
            "{compression:?} batch"
        );
    }
    Ok(topic)
}

/// Compressed batches are stored as sent and read back intact.
#[test]
fn compressed_batches_round_trip() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let topic = fill_compressed(&mut c)?;
    for v in [4i16, 11, 16] {
        let data = fetch(&mut c, v, &topic, 0, 0)?;
        let got: Vec<(i64, i64)> = decode_records(&data.records)?
            .iter()
            .map(|r| (r.offset, r.timestamp))
            .collect();
        let want: Vec<(i64, i64)> = (0..12).map(|i| (i, T0 + 10 * i)).collect();
        ensure!(got == want, "v{v} compressed records: {got:?}");
    }
    Ok(())
}

/// Kafka answers the exact record inside a compressed batch (it decompresses to look).
#[test]
fn timestamp_lookup_inside_compressed_batches() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    fill_compressed(&mut c)?;
    for v in [1i16, 9] {
        let p = list_offset(&mut c, v, "squeezed", 0, T0 + 40)?;
        ensure!(
            (p.offset, p.timestamp) == (4, T0 + 40),
            "v{v} lookup inside a compressed batch: {p:?}"
        );
    }
    let p = list_offset(&mut c, 9, "squeezed", 0, -3)?;
    ensure!(
        (p.offset, p.timestamp) == (11, T0 + 110),
        "max timestamp in a compressed batch: {p:?}"
    );
    Ok(())
}
