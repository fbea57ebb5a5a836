"""ListOffsets: earliest, latest and by timestamp, through confluent-kafka, kafka-python and
kafkajs; message.timestamp.type=LogAppendTime."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, TopicPartition
from confluent_kafka.admin import OffsetSpec

from helpers import (admin, consume_partitions, consumer, create_topic, flush_all, kafkajs,
                     producer, unique_topic)

N = 100
STEP_MS = 1000


@pytest.fixture(scope="module")
def timed_topic(weir_module):
    """Partition 0: N records with timestamps BASE + i*STEP_MS, several records per batch.
    Partition 1: empty."""
    b = weir_module.bootstrap
    t = unique_topic("lo")
    create_topic(b, t, partitions=2)
    base = (int(time.time() * 1000) // 1000) * 1000 - 3_600_000
    p = producer(b, linger_ms=50, batch_num_messages=7)
    for i in range(N):
        p.produce(t, value=b"ts-%d" % i, partition=0, timestamp=base + i * STEP_MS)
    flush_all(p)
    return t, base


def offsets_for_times(bootstrap, topic, partition, ts):
    c = consumer(bootstrap)
    try:
        (r,) = c.offsets_for_times([TopicPartition(topic, partition, ts)], timeout=15)
        assert r.error is None, r.error
        return r.offset
    finally:
        c.close()


def test_records_keep_producer_timestamps(weir_module, timed_topic):
    t, base = timed_topic
    msgs = consume_partitions(weir_module.bootstrap, t, [0], expected={0: N})[0]
    assert [m.timestamp() for m in msgs] == [(TIMESTAMP_CREATE_TIME, base + i * STEP_MS)
                                            for i in range(N)]


@pytest.mark.parametrize("delta,expected", [
    (-10 * STEP_MS, 0),                  # before the first record
    (0, 0),                              # exactly the first
    (37 * STEP_MS, 37),                  # exactly a record in the middle of a batch
    (37 * STEP_MS + 1, 38),              # between two records: the next one
    (50 * STEP_MS - 1, 50),
    ((N - 1) * STEP_MS, N - 1),          # exactly the last
    ((N - 1) * STEP_MS + 1, -1),         # after the last: no such offset (-1)
    (1_000 * STEP_MS, -1),
])
def test_offsets_for_times_confluent(weir_module, timed_topic, delta, expected):
    t, base = timed_topic
    assert offsets_for_times(weir_module.bootstrap, t, 0, base + delta) == expected


def test_offsets_for_times_empty_partition(weir_module, timed_topic):
    t, base = timed_topic
    assert offsets_for_times(weir_module.bootstrap, t, 1, base) == -1


def test_watermarks_confluent(weir_module, timed_topic):
    t, _ = timed_topic
    c = consumer(weir_module.bootstrap)
    try:
        assert c.get_watermark_offsets(TopicPartition(t, 0), timeout=10, cached=False) == (0, N)
        assert c.get_watermark_offsets(TopicPartition(t, 1), timeout=10, cached=False) == (0, 0)
    finally:
        c.close()


def test_admin_list_offsets(weir_module, timed_topic):
    t, base = timed_topic
    a = admin(weir_module.bootstrap)
    tp0, tp1 = TopicPartition(t, 0), TopicPartition(t, 1)

    def one(tp, spec):
        fs = a.list_offsets({tp: spec}, request_timeout=15)
        return list(fs.values())[0].result(timeout=15)

    assert one(tp0, OffsetSpec.earliest()).offset == 0
    assert one(tp0, OffsetSpec.latest()).offset == N
    assert one(tp1, OffsetSpec.earliest()).offset == 0
    assert one(tp1, OffsetSpec.latest()).offset == 0
    r = one(tp0, OffsetSpec.for_timestamp(base + 42 * STEP_MS - 10))
    assert (r.offset, r.timestamp) == (42, base + 42 * STEP_MS)
    assert one(tp0, OffsetSpec.for_timestamp(base + N * STEP_MS)).offset == -1


def test_admin_list_offsets_max_timestamp(weir_module, timed_topic):
    """OffsetSpec.max_timestamp (ListOffsets v7, timestamp -3): the record with the largest
    timestamp."""
    t, base = timed_topic
    a = admin(weir_module.bootstrap)
    tp0 = TopicPartition(t, 0)
    fs = a.list_offsets({tp0: OffsetSpec.max_timestamp()}, request_timeout=15)
    r = list(fs.values())[0].result(timeout=15)
    assert (r.offset, r.timestamp) == (N - 1, base + (N - 1) * STEP_MS)


def test_kafka_python_offsets(weir_module, timed_topic):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTP

    t, base = timed_topic
    c = KafkaConsumer(bootstrap_servers=weir_module.bootstrap, group_id=None,
                      enable_auto_commit=False, request_timeout_ms=30000)
    try:
        tp0, tp1 = KpTP(t, 0), KpTP(t, 1)
        assert c.beginning_offsets([tp0, tp1]) == {tp0: 0, tp1: 0}
        assert c.end_offsets([tp0, tp1]) == {tp0: N, tp1: 0}
        r = c.offsets_for_times({tp0: base + 10 * STEP_MS})
        assert (r[tp0].offset, r[tp0].timestamp) == (10, base + 10 * STEP_MS)
        r = c.offsets_for_times({tp0: base + 10 * STEP_MS + 1})
        assert (r[tp0].offset, r[tp0].timestamp) == (11, base + 11 * STEP_MS)
        r = c.offsets_for_times({tp0: base - 1})
        assert r[tp0].offset == 0
        r = c.offsets_for_times({tp0: base + N * STEP_MS, tp1: base})
        assert r[tp0] is None and r[tp1] is None, r
    finally:
        c.close()


def test_kafkajs_offsets(weir_module, timed_topic):
    t, base = timed_topic
    b = weir_module.bootstrap
    offs = kafkajs("offsets", brokers=[b], topic=t)
    assert [(o["partition"], o["low"], o["high"]) for o in offs] == [(0, 0, N), (1, 0, 0)]
    by_ts = kafkajs("offsetsByTime", brokers=[b], topic=t, timestamp=base + 63 * STEP_MS)
    assert by_ts == [{"partition": 0, "offset": 63}, {"partition": 1, "offset": 0}]
    by_ts = kafkajs("offsetsByTime", brokers=[b], topic=t, timestamp=base - 1)
    assert by_ts == [{"partition": 0, "offset": 0}, {"partition": 1, "offset": 0}]
    # kafkajs maps "no such offset" (-1) to the high watermark
    by_ts = kafkajs("offsetsByTime", brokers=[b], topic=t, timestamp=base + 10 * N * STEP_MS)
    assert by_ts == [{"partition": 0, "offset": N}, {"partition": 1, "offset": 0}]


def test_log_append_time_topic(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("lat")
    create_topic(b, t, partitions=1, config={"message.timestamp.type": "LogAppendTime"})
    old = 1_500_000_000_000
    before = int(time.time() * 1000)
    p = producer(b)
    for i in range(10):
        p.produce(t, value=b"lat-%d" % i, partition=0, timestamp=old + i)
    flush_all(p)
    after = int(time.time() * 1000)
    msgs = consume_partitions(b, t, [0], expected={0: 10})[0]
    assert [m.value() for m in msgs] == [b"lat-%d" % i for i in range(10)]
    for m in msgs:
        ts_type, ts = m.timestamp()
        assert ts_type == TIMESTAMP_LOG_APPEND_TIME, m.timestamp()
        assert before - 5000 <= ts <= after + 5000, (ts, before, after)
    # and lookups by time use the broker's time
    assert offsets_for_times(b, t, 0, old) == 0
    assert offsets_for_times(b, t, 0, after + 60_000) == -1
