"""Compaction of flush objects into per-partition segments, and retention, under load.

While idempotent producers write and consumers read, the gateway compacts small flush
objects into segments (index switched atomically, replaced objects deleted after a grace
period) and retention drops old data. Consumers never see a gap, a duplicate or a
reordering; a consumer reading from the start afterwards reads the whole log from the
segments; the replaced objects are gone from the object store.

Runs against whatever backends the suite uses (local disk and embedded metadata, or S3 and
DynamoDB with WEIR_E2E_OBJECT_STORE=s3 / WEIR_E2E_METADATA=dynamodb).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from conftest import dynamodb_url, free_port, s3_url
from helpers import consumer, create_topic, producer, unique_topic, watermarks
from test_storage import scrape

COMPACTING = ["--flush-interval-ms", "20", "--compaction-interval-ms", "300",
              "--compaction-min-age-ms", "500", "--compaction-grace-ms", "2000",
              "--segment-bytes", "262144", "--retention-check-interval-ms", "500"]


class Tail(threading.Thread):
    """Reads partitions from the start while they are written; records (offset, value)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        super().__init__(daemon=True)
        self.c = consumer(bootstrap, **{"enable.partition.eof": False})
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.seen: dict[int, list[tuple[int, int]]] = {p: [] for p in range(partitions)}
        self.errors: list = []
        self.stop_at: dict[int, int] | None = None  # partition -> end offset to reach
        self.deadline = time.monotonic() + 240

    def done(self) -> bool:
        return self.stop_at is not None and all(
            (self.seen[p][-1][0] + 1 if self.seen[p] else 0) >= end
            for p, end in self.stop_at.items())

    def run(self) -> None:
        try:
            while not self.done() and time.monotonic() < self.deadline:
                msg = self.c.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    self.errors.append(msg.error())
                    continue
                self.seen[msg.partition()].append((msg.offset(), int(msg.value()[:9])))
        finally:
            self.c.close()


def check_contiguous(seen: list[tuple[int, int]], what: str) -> None:
    offsets = [o for o, _ in seen]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), \
        f"{what}: offsets have a gap, duplicate or reordering"
    values = [v for _, v in seen]
    assert len(set(values)) == len(values), f"{what}: duplicate values"
    assert values == sorted(values), f"{what}: values out of order"


@pytest.mark.parametrize("storage", ["in-process", "storage-node"])
def test_compaction_and_retention_under_load(weir_factory, weir_service, storage):
    admin_port = free_port()
    if storage == "in-process":
        weir = weir_factory("--admin-listen", f"127.0.0.1:{admin_port}", *COMPACTING)
        metrics_port = admin_port
    else:
        # The segments are written by a `weir storage` node; the gateway switches the index.
        meta = (dynamodb_url() if os.environ.get("WEIR_E2E_METADATA") == "dynamodb"
                else weir_service("metadata").url)
        metrics_port = free_port()
        node_args = ["--metadata", meta, "--flush-interval-ms", "20",
                     "--metrics-listen", f"127.0.0.1:{metrics_port}"]
        if os.environ.get("WEIR_E2E_OBJECT_STORE") == "s3":
            node_args += ["--object-store", s3_url()]
        node = weir_service("storage", *node_args)
        weir = weir_factory("--admin-listen", f"127.0.0.1:{admin_port}", "--metadata", meta,
                            "--storage", node.url, *COMPACTING)
    kept = unique_topic("compacted")
    expiring = unique_topic("expiring")
    create_topic(weir.bootstrap, kept, partitions=3)
    create_topic(weir.bootstrap, expiring, partitions=1, config={"retention.ms": "3000"})

    tails = [Tail(weir.bootstrap, kept, 3), Tail(weir.bootstrap, expiring, 1)]
    for t in tails:
        t.start()

    p = producer(weir.bootstrap, **{"enable.idempotence": True, "linger.ms": 5})
    acked: dict[tuple[str, int], list[tuple[int, int]]] = {}
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked.setdefault((msg.topic(), msg.partition()), []).append(
                (msg.offset(), int(msg.value()[:9])))

    # ~12 s of load at ~2,500 records/s, 200-byte values: many small flush objects.
    pad = "x" * 190
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 12:
        for _ in range(50):
            p.produce(kept, value=f"{n:09d}{pad}".encode(), partition=n % 3, on_delivery=cb)
            p.produce(expiring, value=f"{n:09d}{pad}".encode(), partition=0, on_delivery=cb)
            n += 1
        p.poll(0)
        time.sleep(0.02)
    p.flush(60)
    assert not errors, errors[:3]

    for t, topic, parts in ((tails[0], kept, 3), (tails[1], expiring, 1)):
        t.stop_at = {q: watermarks(weir.bootstrap, topic, q)[1] for q in range(parts)}
    for t in tails:
        t.join(timeout=240)
        assert not t.is_alive()
        assert not t.errors, t.errors[:3]

    # The live readers saw every acknowledged record once, in order, with no gap.
    for q in range(3):
        seen = tails[0].seen[q]
        check_contiguous(seen, f"{kept}[{q}] live")
        assert seen == sorted(acked[(kept, q)]), f"{kept}[{q}]: live reader differs from acks"
    seen = tails[1].seen[0]
    check_contiguous(seen, f"{expiring}[0] live")

    metrics = scrape(metrics_port)
    assert metrics.get("weir_storage_compaction_segments_total", 0) > 0, metrics
    # Compaction replaced many flush entries: fewer, larger entries now.
    assert metrics.get("weir_storage_compaction_inputs_total", 0) > \
        2 * metrics["weir_storage_compaction_segments_total"], metrics

    # Retention moved the start of the expiring topic while it was read.
    low, high = watermarks(weir.bootstrap, expiring, 0)
    deadline = time.monotonic() + 30
    while low == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        low, high = watermarks(weir.bootstrap, expiring, 0)
    assert low > 0, "retention did not run"

    # Let the grace period pass, then read the whole log again from the segments.
    time.sleep(3)
    deleted = scrape(metrics_port).get('weir_storage_object_requests_total{op="delete"}', 0)
    assert deleted > 0, "no replaced object was deleted"
    again = Tail(weir.bootstrap, kept, 3)
    again.stop_at = {q: watermarks(weir.bootstrap, kept, q)[1] for q in range(3)}
    again.start()
    again.join(timeout=240)
    assert not again.errors, again.errors[:3]
    for q in range(3):
        check_contiguous(again.seen[q], f"{kept}[{q}] re-read")
        assert again.seen[q] == sorted(acked[(kept, q)])

    # And after a restart (caches gone), once more.
    weir.restart()
    again = Tail(weir.bootstrap, kept, 3)
    again.stop_at = {q: watermarks(weir.bootstrap, kept, q)[1] for q in range(3)}
    again.start()
    again.join(timeout=240)
    assert not again.errors, again.errors[:3]
    for q in range(3):
        assert again.seen[q] == sorted(acked[(kept, q)])


def read_from_start(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record of partition 0 from the start to the high watermark: (offset, key, value)."""
    end = watermarks(bootstrap, topic, 0)[1]
    c = consumer(bootstrap, **{"enable.partition.eof": True})
    out = []
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= end:
                        break
                    continue
                raise AssertionError(msg.error())
            out.append((msg.offset(), msg.key(), msg.value()))
    finally:
        c.close()
    return out


def test_key_compaction_keeps_the_latest_value_of_each_key(weir_factory):
    """cleanup.policy=compact: superseded values and old tombstones go, offsets stay."""
    admin_port = free_port()
    weir = weir_factory("--admin-listen", f"127.0.0.1:{admin_port}", *COMPACTING)
    topic = unique_topic("keyed")
    create_topic(weir.bootstrap, topic, partitions=1, config={
        "cleanup.policy": "compact", "delete.retention.ms": "2000",
        "min.cleanable.dirty.ratio": "0.01"})
    p = producer(weir.bootstrap, **{"enable.idempotence": True, "linger.ms": 5,
                                    "compression.type": "lz4"})
    latest: dict[bytes, bytes | None] = {}
    offsets: dict[bytes, int] = {}

    def cb(err, msg):
        assert err is None, err
        offsets[msg.key()] = msg.offset()

    # 20 rounds over 50 keys, spread over ~4 s so that compaction runs meanwhile; then
    # tombstones for k0..k9.
    for rnd in range(20):
        for k in range(50):
            key, value = f"k{k}".encode(), f"v{rnd}-{k}".encode()
            p.produce(topic, key=key, value=value, on_delivery=cb)
            latest[key] = value
        p.poll(0)
        time.sleep(0.2)
    for k in range(10):
        p.produce(topic, key=f"k{k}".encode(), value=None, on_delivery=cb)
        latest[f"k{k}".encode()] = None
    p.flush(30)
    produced = 20 * 50 + 10

    # Wait until compaction has removed every superseded value (tombstones may remain).
    deadline = time.monotonic() + 60
    while True:
        got = read_from_start(weir.bootstrap, topic)
        if len(got) <= 50 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(got) == 50, f"{len(got)} records left of {produced}"
    offs = [o for o, _, _ in got]
    assert offs == sorted(set(offs)), "offsets out of order or repeated"
    # Each record left is its key's latest, at the offset it was written at.
    assert {k: v for _, k, v in got} == latest
    assert all(offsets[k] == o for o, k, _ in got)

    # Once the tombstones are older than delete.retention.ms, a later pass (the log is dirty
    # again after one more record) removes them: deleted keys are gone entirely.
    time.sleep(2.5)
    p.produce(topic, key=b"extra", value=b"x", on_delivery=cb)
    p.flush(30)
    deadline = time.monotonic() + 60
    while True:
        got = read_from_start(weir.bootstrap, topic)
        if len(got) <= 41 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    keys = {k for _, k, _ in got}
    assert keys == {f"k{k}".encode() for k in range(10, 50)} | {b"extra"}, sorted(keys)
    assert all(v == latest.get(k, b"x") for _, k, v in got)
    # The log end did not move back, and new records follow it.
    low, high = watermarks(weir.bootstrap, topic, 0)
    assert high == produced + 1

    # A restart reads the same compacted log.
    weir.restart()
    assert read_from_start(weir.bootstrap, topic) == got
