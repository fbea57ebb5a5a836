"""Idempotent producers: InitProducerId + sequence numbers give exactly-once, in-order logs."""

from __future__ import annotations

import pytest

import kproto
from helpers import (DeliveryLog, consume_partitions, create_topic, flush_all, producer,
                     unique_topic, watermarks)


def check_exactly_once_in_order(got: dict[int, list], expected: dict[int, list[bytes]]):
    for part, values in expected.items():
        msgs = got[part]
        vals = [m.value() for m in msgs]
        dupes = len(vals) - len(set(vals))
        assert dupes == 0, f"partition {part}: {dupes} duplicated records"
        assert vals == values, f"partition {part}: records missing or out of order"
        assert [m.offset() for m in msgs] == list(range(len(values)))


def test_confluent_idempotent_producer(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("idem-ck")
    partitions = 3
    create_topic(b, t, partitions=partitions)
    n = 20_000
    log = DeliveryLog()
    p = producer(b, enable_idempotence=True, acks="all", linger_ms=0, batch_num_messages=10,
                 max_in_flight_requests_per_connection=5, message_send_max_retries=1_000_000,
                 retry_backoff_ms=50, on_delivery=log)
    expected = {part: [] for part in range(partitions)}
    for i in range(n):
        part = i % partitions
        v = b"idem-%06d" % i
        expected[part].append(v)
        while True:
            try:
                p.produce(t, key=v, value=v, partition=part)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    flush_all(p, timeout=120)
    assert not log.errors, log.errors[:3]
    assert len(log.ok) == n
    got = consume_partitions(b, t, list(range(partitions)),
                             expected={k: len(v) for k, v in expected.items()}, timeout=120)
    check_exactly_once_in_order(got, expected)
    # delivery reports agree with the log
    for part, msgs in got.items():
        for m in msgs:
            assert log.ok[m.key()] == (part, m.offset())
    for part, values in expected.items():
        assert watermarks(b, t, part) == (0, len(values))


def test_kafka_python_idempotent_producer(weir_module):
    from kafka import KafkaProducer

    b = weir_module.bootstrap
    t = unique_topic("idem-kp")
    create_topic(b, t, partitions=2)
    prod = KafkaProducer(bootstrap_servers=b, enable_idempotence=True, acks="all",
                         batch_size=512, linger_ms=1, max_in_flight_requests_per_connection=5,
                         request_timeout_ms=30000)
    expected = {0: [], 1: []}
    try:
        # kafka-python 3 is idempotent by default; make sure it really is here
        assert prod.config["enable_idempotence"] is True
        futures = []
        for i in range(6000):
            v = b"kp-idem-%05d" % i
            expected[i % 2].append(v)
            futures.append(prod.send(t, value=v, partition=i % 2))
        prod.flush(timeout=120)
        for f in futures:
            f.get(timeout=30)
    finally:
        prod.close(timeout=10)
    got = consume_partitions(b, t, [0, 1], expected={0: 3000, 1: 3000}, timeout=120)
    check_exactly_once_in_order(got, expected)


def test_broker_deduplicates_a_resent_batch(weir_module):
    """The same batch (same producer id, epoch, sequence) sent twice is written once."""
    b = weir_module.bootstrap
    t = unique_topic("idem-raw")
    create_topic(b, t, partitions=1)
    with kproto.Conn(weir_module.port) as c:
        err, pid, epoch = kproto.init_producer_id(c)
        assert err == 0 and pid >= 0 and epoch >= 0, (err, pid, epoch)

        batch0 = kproto.record_batch([b"a0", b"a1", b"a2"], producer_id=pid,
                                     producer_epoch=epoch, base_sequence=0)
        (r1,) = kproto.produce_v3(c, t, 0, batch0)
        assert r1.error_code == 0 and r1.base_offset == 0, r1

        # a retry of the same batch: success (or DUPLICATE_SEQUENCE_NUMBER), not a second copy
        (r2,) = kproto.produce_v3(c, t, 0, batch0)
        assert r2.error_code in (0, kproto.DUPLICATE_SEQUENCE_NUMBER), r2
        if r2.error_code == 0:
            assert r2.base_offset == 0, f"duplicate acknowledged at a new offset: {r2}"

        # the next sequence is accepted
        batch1 = kproto.record_batch([b"b0", b"b1"], producer_id=pid, producer_epoch=epoch,
                                     base_sequence=3)
        (r3,) = kproto.produce_v3(c, t, 0, batch1)
        assert r3.error_code == 0 and r3.base_offset == 3, r3

        # the older batch again (still within the last five): still not re-appended
        (r4,) = kproto.produce_v3(c, t, 0, batch0)
        assert r4.error_code in (0, kproto.DUPLICATE_SEQUENCE_NUMBER), r4

        # a gap in the sequence is refused
        gap = kproto.record_batch([b"gap"], producer_id=pid, producer_epoch=epoch,
                                  base_sequence=10)
        (r5,) = kproto.produce_v3(c, t, 0, gap)
        assert r5.error_code == kproto.OUT_OF_ORDER_SEQUENCE_NUMBER, r5

    assert watermarks(b, t, 0) == (0, 5)
    got = consume_partitions(b, t, [0], expected={0: 5})[0]
    assert [m.value() for m in got] == [b"a0", b"a1", b"a2", b"b0", b"b1"]


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_producer_ids_are_distinct(weir_module, version):
    with kproto.Conn(weir_module.port) as c:
        ids = [kproto.init_producer_id(c, version) for _ in range(5)]
    assert all(err == 0 and pid >= 0 and epoch >= 0 for err, pid, epoch in ids), ids
    assert len({pid for _, pid, _ in ids}) == 5, ids
