//! Produce validation: CRC, magic, size, unknown topics, acks.

use crate::support::*;
use anyhow::{ensure, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::ResponseError;

const VERSIONS: [i16; 3] = [3, 9, 11];

/// A magic-1 message set (offset, size, crc, magic 1, attributes, timestamp, key, value).
fn magic_v1_message() -> Bytes {
    let mut msg = BytesMut::new();
    msg.put_u32(0); // crc (IEEE), left wrong: the magic must be refused first anyway
    msg.put_i8(1);
    msg.put_i8(0);
    msg.put_i64(T0);
    msg.put_i32(-1);
    msg.put_i32(5);
    msg.put_slice(b"hello");
    let mut out = BytesMut::new();
    out.put_i64(0);
    out.put_i32(msg.len() as i32);
    out.put_slice(&msg);
    out.freeze()
}

fn expect_error(
    p: &kafka_protocol::messages::produce_response::PartitionProduceResponse,
    e: ResponseError,
    what: &str,
) -> Result<()> {
    ensure!(
        p.error_code == code(e),
        "{what}: error {} {:?}, expected {e:?}",
        p.error_code,
        p.error_message
    );
    ensure!(
        p.base_offset == -1,
        "{what}: refused batch got base offset {}",
        p.base_offset
    );
    Ok(())
}

#[test]
fn invalid_batches_are_refused_with_kafka_codes() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    create_topic(&mut c, "small", 1, &[("max.message.bytes", "1000")])?;
    for v in VERSIONS {
        let good = simple_batch(None, 3)?;
        let mut bad_crc = BytesMut::from(&good[..]);
        bad_crc[17] ^= 0xff;
        let p = produce(&mut c, v, -1, "small", 0, bad_crc.freeze())?;
        expect_error(
            &p,
            ResponseError::CorruptMessage,
            &format!("v{v} flipped crc byte"),
        )?;

        let mut bad_body = BytesMut::from(&good[..]);
        let last = bad_body.len() - 1;
        bad_body[last] ^= 0x01;
        let p = produce(&mut c, v, -1, "small", 0, bad_body.freeze())?;
        expect_error(
            &p,
            ResponseError::CorruptMessage,
            &format!("v{v} flipped record byte"),
        )?;

        let p = produce(&mut c, v, -1, "small", 0, magic_v1_message())?;
        ensure!(
            p.error_code != 0 && p.base_offset == -1,
            "v{v} magic 1 accepted: {p:?}"
        );

        let big = "x".repeat(2000);
        let p = produce(&mut c, v, -1, "small", 0, batch(None, &[("k", &big, T0)])?)?;
        expect_error(
            &p,
            ResponseError::MessageTooLarge,
            &format!("v{v} 2000-byte batch, max.message.bytes 1000"),
        )?;

        let p = produce(&mut c, v, -1, "no-such-topic", 0, good.clone())?;
        expect_error(
            &p,
            ResponseError::UnknownTopicOrPartition,
            &format!("v{v} unknown topic"),
        )?;
        let p = produce(&mut c, v, -1, "small", 7, good.clone())?;
        expect_error(
            &p,
            ResponseError::UnknownTopicOrPartition,
            &format!("v{v} unknown partition"),
        )?;

        for acks in [2i16, -2, 5] {
            let p = produce(&mut c, v, acks, "small", 0, good.clone())?;
            expect_error(
                &p,
                ResponseError::InvalidRequiredAcks,
                &format!("v{v} acks={acks}"),
            )?;
        }
    }
    // None of it was written; a valid batch still is.
    ensure!(
        log_end(&mut c, "small", 0)? == 0,
        "refused batches reached the log"
    );
    ensure!(produce_ok(&mut c, "small", 0, simple_batch(None, 3)?)? == 0);
    ensure!(log_end(&mut c, "small", 0)? == 3);
    Ok(())
}

#[test]
fn acks_zero_gets_no_response_but_is_written() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let topic = create_topic(&mut c, "fire-and-forget", 1, &[])?;
    for v in VERSIONS {
        c.send(
            v,
            &produce_request(0, "fire-and-forget", 0, simple_batch(None, 2)?),
        )?;
    }
    // The next frame on this connection answers the Metadata request, not a produce.
    let metadata = c.call(1, &MetadataRequest::default().with_topics(Some(vec![])))?;
    ensure!(metadata.brokers.len() == 1);
    // acks=0 is not waited for: poll until the records are readable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let records = loop {
        let data = fetch(&mut c, 11, &topic, 0, 0)?;
        ensure!(data.error_code == 0, "fetch error {}", data.error_code);
        let records = decode_records(&data.records)?;
        if records.len() >= 6 || std::time::Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let got = offsets_keys_values(&records, 0);
    let want: Vec<_> = (0..6)
        .map(|i| (i as i64, format!("k{}", i % 2), format!("v{}", i % 2)))
        .collect();
    ensure!(got == want, "acks=0 records: {got:?}");
    // And the silent produce did not break the connection's ordering.
    c.set_read_timeout(std::time::Duration::from_secs(5))?;
    let data = fetch(&mut c, 11, &topic, 0, 6).context("fetch at the log end")?;
    ensure!(data.high_watermark == 6);
    Ok(())
}

/// message.timestamp.type=LogAppendTime: the broker stamps the batch (and fixes its CRC).
#[test]
fn log_append_time_topics_stamp_batches() -> Result<()> {
    use kafka_protocol::records::TimestampType;
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let topic = create_topic(
        &mut c,
        "stamped",
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    )?;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let p = produce(&mut c, 9, -1, "stamped", 0, simple_batch(None, 3)?)?;
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    ensure!(p.error_code == 0, "produce: {p:?}");
    let stamp = p.log_append_time_ms;
    ensure!(
        (before - 1000..=after + 1000).contains(&stamp),
        "log_append_time_ms {stamp} not now ({before}..{after})"
    );
    // The decoder checks the CRC-32C, so this also proves the rewritten batch is valid.
    let data = fetch(&mut c, 11, &topic, 0, 0)?;
    let records = decode_records(&data.records)?;
    ensure!(records.len() == 3, "{} records", records.len());
    ensure!(
        records
            .iter()
            .all(|r| r.timestamp_type == TimestampType::LogAppend),
        "records {records:?}"
    );
    // Readers take a LogAppendTime batch's max timestamp (bytes 35..43) as every record's.
    let raw = data.records.unwrap_or_default();
    ensure!(raw.len() > 43, "no batch");
    let max_timestamp = i64::from_be_bytes(raw[35..43].try_into()?);
    ensure!(
        max_timestamp == stamp,
        "batch max timestamp {max_timestamp}, append time {stamp}"
    );
    let found = list_offset(&mut c, 5, "stamped", 0, stamp)?;
    ensure!(
        found.error_code == 0 && found.offset == 0 && found.timestamp == stamp,
        "lookup by the stamp: {found:?}"
    );
    Ok(())
}

/// Each partition of a request is answered on its own: a bad one does not sink a good one.
#[test]
fn partitions_of_one_request_are_independent() -> Result<()> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    create_topic(&mut c, "pair", 2, &[])?;
    let good = simple_batch(None, 2)?;
    let mut corrupt = BytesMut::from(&good[..]);
    corrupt[20] ^= 0x40;
    let part = |index: i32, records: Option<Bytes>| {
        PartitionProduceData::default()
            .with_index(index)
            .with_records(records)
    };
    for v in VERSIONS {
        let req = produce_request(-1, "pair", 0, good.clone()).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic_name("pair"))
                .with_partition_data(vec![
                    part(0, Some(good.clone())),
                    part(1, Some(corrupt.clone().freeze())),
                    part(9, Some(good.clone())),
                    part(1, None),
                ]),
            TopicProduceData::default()
                .with_name(topic_name("nope"))
                .with_partition_data(vec![part(0, Some(good.clone()))]),
        ]);
        let resp = c.call(v, &req)?;
        let codes: Vec<Vec<(i32, i16)>> = resp
            .responses
            .iter()
            .map(|t| {
                t.partition_responses
                    .iter()
                    .map(|p| (p.index, p.error_code))
                    .collect()
            })
            .collect();
        let corrupt_code = code(ResponseError::CorruptMessage);
        let unknown = code(ResponseError::UnknownTopicOrPartition);
        ensure!(
            codes.len() == 2 && codes[1] == vec![(0, unknown)],
            "v{v}: {codes:?}"
        );
        let first = &codes[0];
        ensure!(
            first.len() == 4
                && first[0] == (0, 0)
                && first[1] == (1, corrupt_code)
                && first[2] == (9, unknown),
            "v{v}: {codes:?}"
        );
        ensure!(
            first[3].0 == 1 && first[3].1 != 0,
            "v{v}: null records accepted: {codes:?}"
        );
    }
    ensure!(log_end(&mut c, "pair", 0)? == 2 * VERSIONS.len() as i64);
    ensure!(log_end(&mut c, "pair", 1)? == 0);
    Ok(())
}
