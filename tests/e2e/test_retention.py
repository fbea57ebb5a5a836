"""Retention: retention.ms and retention.bytes move the log start offset and drop old data."""

from __future__ import annotations

import time

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from helpers import (admin, consume_partitions, consumer, create_topic, flush_all,
                     produce_values, producer, unique_topic, wait_until, watermarks)

WEIR_ARGS = ["--retention-check-interval-ms", "200", "--flush-interval-ms", "5"]

RECORD = 1000  # value bytes per record in the retention.bytes test


def test_retention_ms_expires_everything_old(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("ret-ms")
    create_topic(b, t, partitions=2, config={"retention.ms": "1000"})
    for part in (0, 1):
        # several separate produce requests, so several batches
        for chunk in range(5):
            produce_values(b, t, [b"old-%d-%d-%d" % (part, chunk, i) for i in range(20)],
                           partition=part)
    assert watermarks(b, t, 0) == (0, 100)

    for part in (0, 1):
        wait_until(lambda: watermarks(b, t, part) == (100, 100), 30,
                   what=f"partition {part} low watermark to reach the high watermark")
    # nothing old is readable
    got = consume_partitions(b, t, [0, 1], timeout=30)
    assert got == {0: [], 1: []}, {p: [m.value() for m in v] for p, v in got.items()}

    # new records continue at the old high watermark and are readable until they expire
    assert produce_values(b, t, [b"fresh"], partition=0) == [100]
    got = consume_partitions(b, t, [0], expected={0: 1}, timeout=30)[0]
    assert [(m.offset(), m.value()) for m in got] == [(100, b"fresh")]
    wait_until(lambda: watermarks(b, t, 0) == (101, 101), 30, what="the fresh record to expire")


def test_retention_ms_keeps_recent_records(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("ret-keep")
    create_topic(b, t, partitions=1, config={"retention.ms": "3600000"})
    produce_values(b, t, [b"keep-%d" % i for i in range(50)])
    time.sleep(2)  # ten retention checks
    assert watermarks(b, t, 0) == (0, 50)


def test_retention_ms_uses_record_timestamps(weir_module):
    """Records stamped two hours ago expire under retention.ms of one hour; recent ones stay."""
    b = weir_module.bootstrap
    t = unique_topic("ret-ts")
    create_topic(b, t, partitions=1, config={"retention.ms": "3600000"})
    p = producer(b)
    old = int(time.time() * 1000) - 2 * 3_600_000
    for i in range(10):
        p.produce(t, value=b"ancient-%d" % i, partition=0, timestamp=old + i)
    flush_all(p)
    produce_values(b, t, [b"recent-%d" % i for i in range(10)])
    wait_until(lambda: watermarks(b, t, 0)[0] == 10, 30, what="the ancient records to expire")
    assert watermarks(b, t, 0) == (10, 20)
    got = consume_partitions(b, t, [0], expected={0: 10})[0]
    assert [m.value() for m in got] == [b"recent-%d" % i for i in range(10)]


def test_retention_ms_lowered_by_alter_configs(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("ret-alter")
    create_topic(b, t, partitions=1)  # default retention: nothing expires
    produce_values(b, t, [b"r-%d" % i for i in range(30)])
    time.sleep(1.5)
    assert watermarks(b, t, 0) == (0, 30)
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("retention.ms", "500", incremental_operation=AlterConfigOpType.SET)])
    admin(b).incremental_alter_configs([res], request_timeout=30)[res].result(timeout=30)
    wait_until(lambda: watermarks(b, t, 0) == (30, 30), 30, what="retention after AlterConfigs")


def test_retention_bytes_bounds_the_log(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("ret-bytes")
    limit = 20_000
    create_topic(b, t, partitions=1, config={"retention.bytes": str(limit)})
    n = 200
    for i in range(n):  # one batch per record: about 1.1 KB each
        produce_values(b, t, [b"%06d" % i + b"b" * (RECORD - 6)], partition=0)

    def trimmed():
        low, high = watermarks(b, t, 0)
        return low > 0 and (high - low) * RECORD <= limit + 4 * (RECORD + 100) and (low, high)

    wait_until(trimmed, 30, what="retention.bytes to trim the log")

    # retention may take a few checks to get there: wait until the log start stops moving
    # (over five retention checks), then it must still be within the bound
    def settled():
        before = watermarks(b, t, 0)
        time.sleep(1.0)
        after = watermarks(b, t, 0)
        return before == after and after
    low, high = wait_until(settled, 30, interval=0, what="the log start to settle")
    assert trimmed(), f"log trimmed below the bound: {(low, high)}"
    assert high == n
    kept = high - low
    # what is kept is the newest data, and not much less than the limit
    assert kept * (RECORD + 100) >= limit // 2, f"only {kept} records kept for a {limit} B limit"
    got = consume_partitions(b, t, [0], expected={0: kept})[0]
    assert [m.offset() for m in got] == list(range(low, high))
    assert [int(m.value()[:6]) for m in got] == list(range(low, high))
    c = consumer(b)
    try:
        (r,) = c.offsets_for_times([TopicPartition(t, 0, 0)], timeout=15)
        assert r.offset == low, "a lookup from time 0 should land on the log start"
    finally:
        c.close()
