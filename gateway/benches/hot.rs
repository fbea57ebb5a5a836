//! Micro-benchmarks of the produce and fetch hot paths: batch validation and offset
//! assignment, object footer encode/decode, request guard and decode.
//! Run: `cargo bench -p weir-gateway`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{ApiKey, RequestKind, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::hint::black_box;
use weir_common::{TopicId, TopicPartition};
use weir_gateway::{batch, guard};
use weir_storage::object::{read_footer, write_footer, FooterEntry};

fn batch_of(records: usize, size: usize) -> BytesMut {
    let records: Vec<Record> = (0..records as i64)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: 7,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(i.to_string())),
            value: Some(Bytes::from(vec![b'x'; size])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    if let Err(e) = RecordBatchEncoder::encode(&mut buf, &records, &options) {
        panic!("encode: {e}");
    }
    buf
}

fn batches(c: &mut Criterion) {
    let b = batch_of(64, 1024);
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Bytes(b.len() as u64));
    g.bench_function("validate_and_assign_64x1KiB", |bench| {
        bench.iter(|| {
            let mut copy = BytesMut::from(&b[..]);
            let valid = batch::validate(black_box(&copy), 1 << 20).map_err(|e| e.to_string());
            if let Ok(v) = valid {
                batch::assign(&mut copy, v[0].start, 1000, 3);
            }
            black_box(copy)
        })
    });
    g.finish();
}

fn footers(c: &mut Criterion) {
    let entries: Vec<FooterEntry> = (0..256)
        .map(|p| FooterEntry {
            tp: TopicPartition {
                topic_id: TopicId::from_u128(p as u128 / 8),
                partition: p % 8,
            },
            base_offset: 1000,
            last_offset: 1999,
            max_timestamp: 1_700_000_000_000,
            position: p as u64 * 4096,
            length: 4096,
            batches: 4,
        })
        .collect();
    let mut data = BytesMut::from(&vec![0u8; 256 * 4096][..]);
    write_footer(&mut data, &entries);
    let object = data.freeze();
    c.bench_function("footer/encode_256", |bench| {
        bench.iter(|| {
            let mut buf = BytesMut::with_capacity(256 * 64);
            write_footer(&mut buf, black_box(&entries));
            black_box(buf)
        })
    });
    c.bench_function("footer/decode_256", |bench| {
        bench.iter(|| black_box(read_footer(black_box(&object))))
    });
}

fn requests(c: &mut Criterion) {
    let records = batch_of(64, 1024).freeze();
    let partitions = (0..8)
        .map(|p| {
            PartitionProduceData::default()
                .with_index(p)
                .with_records(Some(records.clone()))
        })
        .collect();
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("bench")))
            .with_partition_data(partitions)]);
    let mut buf = BytesMut::new();
    if let Err(e) = req.encode(&mut buf, 9) {
        panic!("encode: {e}");
    }
    let body = buf.freeze();
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("guard_and_decode_produce_v9_8x64KiB", |bench| {
        bench.iter(|| {
            let ok = guard::check_request_body(0, 9, black_box(&body)).is_ok();
            let mut b = body.clone();
            black_box((ok, RequestKind::decode(ApiKey::Produce, &mut b, 9).is_ok()))
        })
    });
    g.finish();
}

criterion_group!(benches, batches, footers, requests);
criterion_main!(benches);
