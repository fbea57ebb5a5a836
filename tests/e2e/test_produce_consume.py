"""Produce and consume with every client: confluent-kafka (bulk, exact check), kafka-python,
aiokafka, kcat and kafkajs; acks 0/1/all; Fetch long polling."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from confluent_kafka import OFFSET_END, KafkaError, TopicPartition

import kproto
from helpers import (DeliveryLog, consume_partitions, consumer, create_topic, flush_all, kafkajs,
                     kcat, produce_values, producer, unique_topic, watermarks)

# -- the bulk test ---------------------------------------------------------------------------
N_BULK = 100_000
BULK_PARTITIONS = 6
_BASE = random.Random(1234).randbytes(64 * 1024)


def bulk_record(i: int):
    key = b"key-%06d" % i
    if i % 1000 == 999:
        size = 10_000 + (i % 241)  # about 10 KB
    else:
        size = 1 + (i * 7919) % 400
    start = (i * 31) % (len(_BASE) - size)
    value = b"%d|" % i + _BASE[start:start + size]
    headers = None
    if i % 7 == 0:
        headers = [("idx", b"%d" % i), ("bin", bytes([i % 256, 0, 255])), ("idx", b"dup-key")]
    if i % 50 == 0:
        headers = (headers or []) + [("null-value", None)]
    return key, value, headers


def test_bulk_100k_keyed_records_exact(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("bulk")
    create_topic(b, t, partitions=BULK_PARTITIONS)

    log = DeliveryLog()
    p = producer(b, linger_ms=10, acks="all", on_delivery=log,
                 queue_buffering_max_messages=200_000, queue_buffering_max_kbytes=512 * 1024)
    t0 = time.monotonic()
    for i in range(N_BULK):
        key, value, headers = bulk_record(i)
        while True:
            try:
                p.produce(t, key=key, value=value, headers=headers)
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    flush_all(p, timeout=120)
    produce_s = time.monotonic() - t0
    assert not log.errors, f"{len(log.errors)} delivery errors, first: {log.errors[:3]}"
    assert len(log.ok) == N_BULK

    # offsets per partition are exactly 0..n-1
    per_partition: dict[int, list[int]] = {}
    for part, off in log.ok.values():
        per_partition.setdefault(part, []).append(off)
    assert set(per_partition) <= set(range(BULK_PARTITIONS))
    assert len(per_partition) == BULK_PARTITIONS, "keyed records should reach every partition"
    counts = {}
    for part, offs in per_partition.items():
        offs.sort()
        assert offs == list(range(len(offs))), f"partition {part}: offsets not contiguous from 0"
        counts[part] = len(offs)

    for part, n in counts.items():
        assert watermarks(b, t, part) == (0, n), f"partition {part}"

    t0 = time.monotonic()
    got = consume_partitions(b, t, list(range(BULK_PARTITIONS)), expected=counts, timeout=120)
    consume_s = time.monotonic() - t0
    seen = 0
    for part, msgs in got.items():
        assert len(msgs) == counts[part], f"partition {part}: {len(msgs)} != {counts[part]}"
        for expected_offset, m in enumerate(msgs):
            assert m.offset() == expected_offset, f"partition {part}"
            key = m.key()
            i = int(key[4:])
            ek, ev, eh = bulk_record(i)
            assert key == ek
            assert log.ok[key] == (part, m.offset()), f"{key}: delivered at {log.ok[key]}"
            assert m.value() == ev, f"{key}: value differs"
            assert (m.headers() or None) == eh, f"{key}: headers {m.headers()} != {eh}"
            assert m.timestamp()[1] > 0
            seen += 1
    assert seen == N_BULK
    print(f"produced {N_BULK} in {produce_s:.1f}s, consumed in {consume_s:.1f}s")


# -- acks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks_round_trip(weir_module, acks):
    b = weir_module.bootstrap
    t = unique_topic(f"acks{acks}")
    create_topic(b, t, partitions=1)
    values = [b"acks-%s-%05d" % (acks.encode(), i) for i in range(2000)]
    log = DeliveryLog()
    p = producer(b, acks=acks, on_delivery=log, linger_ms=2)
    for v in values:
        p.produce(t, key=v, value=v, partition=0)
        p.poll(0)
    flush_all(p)
    assert not log.errors, log.errors[:3]
    assert len(log.ok) == len(values)
    if acks != "0":
        assert sorted(off for _, off in log.ok.values()) == list(range(len(values)))
    got = consume_partitions(b, t, [0], expected={0: len(values)})[0]
    assert [m.value() for m in got] == values
    assert [m.offset() for m in got] == list(range(len(values)))
    assert watermarks(b, t, 0) == (0, len(values))


# -- kafka-python ---------------------------------------------------------------------------
def test_kafka_python_round_trip(weir_module):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KpTP

    b = weir_module.bootstrap
    t = unique_topic("kp")
    create_topic(b, t, partitions=2)
    prod = KafkaProducer(bootstrap_servers=b, acks="all", linger_ms=5, request_timeout_ms=30000)
    sent = {}
    try:
        futures = []
        for i in range(500):
            headers = [("n", b"%d" % i)] if i % 3 == 0 else []
            fut = prod.send(t, key=b"kp-%d" % i, value=b"value-%d-" % i + b"x" * (i % 97),
                            partition=i % 2, headers=headers)
            futures.append((i, headers, fut))
        prod.flush(timeout=60)
        for i, headers, fut in futures:
            md = fut.get(timeout=30)
            sent[(md.partition, md.offset)] = (b"kp-%d" % i, b"value-%d-" % i + b"x" * (i % 97),
                                               headers)
    finally:
        prod.close(timeout=10)
    for part in (0, 1):
        assert sorted(o for p, o in sent if p == part) == list(range(250))

    cons = KafkaConsumer(bootstrap_servers=b, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", request_timeout_ms=30000)
    got = {}
    try:
        tps = [KpTP(t, 0), KpTP(t, 1)]
        cons.assign(tps)
        cons.seek_to_beginning(*tps)
        deadline = time.monotonic() + 60
        while len(got) < 500 and time.monotonic() < deadline:
            for tp, msgs in cons.poll(timeout_ms=500).items():
                for m in msgs:
                    got[(m.partition, m.offset)] = (m.key, m.value, list(m.headers))
        assert cons.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
        assert cons.end_offsets(tps) == {tps[0]: 250, tps[1]: 250}
    finally:
        cons.close()
    assert len(got) == 500
    for k, (key, value, headers) in sent.items():
        assert got[k][0] == key and got[k][1] == value, k
        assert [(h[0], h[1]) for h in got[k][2]] == [(h[0], h[1]) for h in headers], k


# -- aiokafka -----------------------------------------------------------------------------------
def test_aiokafka_round_trip(weir_module):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition as AioTP

    b = weir_module.bootstrap
    t = unique_topic("aio")
    create_topic(b, t, partitions=2)

    async def run():
        prod = AIOKafkaProducer(bootstrap_servers=b, acks="all", request_timeout_ms=30000)
        await prod.start()
        sent = {}
        try:
            for i in range(300):
                md = await asyncio.wait_for(
                    prod.send_and_wait(t, key=b"aio-%d" % i, value=b"v%d" % i * (1 + i % 5),
                                       partition=i % 2, headers=[("h", b"%d" % i)]), 30)
                sent[(md.partition, md.offset)] = (b"aio-%d" % i, b"v%d" % i * (1 + i % 5))
        finally:
            await prod.stop()

        cons = AIOKafkaConsumer(bootstrap_servers=b, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", request_timeout_ms=30000)
        await cons.start()
        got = {}
        try:
            tps = [AioTP(t, 0), AioTP(t, 1)]
            cons.assign(tps)
            await cons.seek_to_beginning(*tps)
            deadline = time.monotonic() + 60
            while len(got) < 300 and time.monotonic() < deadline:
                res = await cons.getmany(timeout_ms=500)
                for tp, msgs in res.items():
                    for m in msgs:
                        got[(m.partition, m.offset)] = (m.key, m.value, list(m.headers))
            ends = await cons.end_offsets(tps)
        finally:
            await cons.stop()
        return sent, got, ends, tps

    sent, got, ends, tps = asyncio.run(asyncio.wait_for(run(), 120))
    for part in (0, 1):
        assert sorted(o for p, o in sent if p == part) == list(range(150))
    assert ends == {tps[0]: 150, tps[1]: 150}
    assert len(got) == 300
    for k, (key, value) in sent.items():
        assert got[k][:2] == (key, value), k
        assert got[k][2] == [("h", key[len("aio-"):])], k


# -- kcat ---------------------------------------------------------------------------------------
def test_kcat_round_trip(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("kcat")
    create_topic(b, t, partitions=2)
    lines = [f"kc-{i}:value number {i}" for i in range(300)]
    kcat(["-b", b, "-t", t, "-p", "0", "-P", "-K:", "-X", "acks=all"],
         input_data=("\n".join(lines) + "\n").encode())
    out = kcat(["-b", b, "-C", "-t", t, "-p", "0", "-o", "beginning", "-e", "-q",
                "-f", "%k:%s:%o\\n"]).decode()
    assert out.splitlines() == [f"{line}:{i}" for i, line in enumerate(lines)]

    # and the same records through librdkafka 2.16 (confluent-kafka)
    got = consume_partitions(b, t, [0, 1], expected={0: 300, 1: 0})
    assert got[1] == []
    assert [(m.key().decode(), m.value().decode()) for m in got[0]] == [
        tuple(line.split(":", 1)) for line in lines]

    # records from another client, read by kcat
    produce_values(b, t, [b"from-confluent-%d" % i for i in range(5)], partition=1,
                   keys=[b"c%d" % i for i in range(5)])
    out = kcat(["-b", b, "-C", "-t", t, "-p", "1", "-o", "beginning", "-e", "-q",
                "-f", "%k:%s:%o\\n"]).decode()
    assert out.splitlines() == [f"c{i}:from-confluent-{i}:{i}" for i in range(5)]


# -- kafkajs ------------------------------------------------------------------------------------
def test_kafkajs_produce_consumed_by_confluent(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("js")
    create_topic(b, t, partitions=3)
    messages = [{"key": f"js-{i}", "value": f"kafkajs value {i} " + "z" * (i % 50),
                 "partition": i % 3, "headers": {"idx": str(i)}} for i in range(600)]
    res = kafkajs("produce", brokers=[b], topic=t, acks=-1, messages=messages, batchSize=50)
    assert res, "no produce results"
    assert all(r["errorCode"] == 0 for r in res), res[:3]

    got = consume_partitions(b, t, [0, 1, 2], expected={0: 200, 1: 200, 2: 200})
    for part in range(3):
        expected = [m for m in messages if m["partition"] == part]
        msgs = got[part]
        assert [m.offset() for m in msgs] == list(range(200))
        assert [(m.key().decode(), m.value().decode()) for m in msgs] == [
            (e["key"], e["value"]) for e in expected]
        assert [m.headers() for m in msgs] == [[("idx", e["headers"]["idx"].encode())]
                                               for e in expected]


@pytest.mark.parametrize("acks", [0, 1, -1])
def test_kafkajs_acks(weir_module, acks):
    b = weir_module.bootstrap
    t = unique_topic(f"jsacks{acks + 1}")
    create_topic(b, t, partitions=1)
    messages = [{"key": None, "value": f"js-acks-{i}", "partition": 0} for i in range(100)]
    kafkajs("produce", brokers=[b], topic=t, acks=acks, messages=messages, batchSize=10)
    got = consume_partitions(b, t, [0], expected={0: 100})[0]
    assert [m.value().decode() for m in got] == [m["value"] for m in messages]


# -- Fetch long polling ----------------------------------------------------------------------
def test_fetch_long_poll_waits_on_empty_partition(weir_module):
    t = unique_topic("lp-empty")
    create_topic(weir_module.bootstrap, t, partitions=1)
    with kproto.Conn(weir_module.port, timeout=20) as c:
        t0 = time.monotonic()
        (r,) = kproto.fetch_v5(c, t, 0, 0, max_wait_ms=1500)
        elapsed = time.monotonic() - t0
    assert r.error_code == 0, r
    assert not r.records
    assert r.high_watermark == 0
    assert 1.2 <= elapsed < 6, f"fetch with max_wait 1500 ms on an empty partition took {elapsed:.2f}s"


def test_fetch_returns_at_once_when_data_is_ready(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("lp-ready")
    create_topic(b, t, partitions=1)
    produce_values(b, t, [b"ready-%d" % i for i in range(10)])
    with kproto.Conn(weir_module.port, timeout=20) as c:
        t0 = time.monotonic()
        (r,) = kproto.fetch_v5(c, t, 0, 0, max_wait_ms=5000, min_bytes=1)
        elapsed = time.monotonic() - t0
    assert r.error_code == 0, r
    assert r.high_watermark == 10
    assert r.records and sum(n for _, n in kproto.batch_record_counts(r.records)) == 10
    assert elapsed < 1.0, f"fetch waited {elapsed:.2f}s although data was ready"

    # fetching at the high watermark with the data there is empty; beyond it is out of range
    with kproto.Conn(weir_module.port, timeout=20) as c:
        (r,) = kproto.fetch_v5(c, t, 0, 11, max_wait_ms=100)
    assert r.error_code == 1, r  # OFFSET_OUT_OF_RANGE


def test_fetch_long_poll_wakes_on_produce(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("lp-wake")
    create_topic(b, t, partitions=1)
    result = {}

    def fetch():
        with kproto.Conn(weir_module.port, timeout=30) as c:
            t0 = time.monotonic()
            result["r"] = kproto.fetch_v5(c, t, 0, 0, max_wait_ms=10000)
            result["elapsed"] = time.monotonic() - t0

    th = threading.Thread(target=fetch)
    th.start()
    time.sleep(1.0)
    produce_values(b, t, [b"wake-up"])
    th.join(30)
    assert not th.is_alive()
    (r,) = result["r"]
    assert r.error_code == 0 and r.records, r
    assert 0.9 <= result["elapsed"] < 5, \
        f"long poll returned after {result['elapsed']:.2f}s (produce at ~1s, max_wait 10s)"


def test_confluent_consumer_sees_new_records_promptly(weir_module):
    """A consumer at the end of a partition gets a new record quickly (long poll wakes)."""
    b = weir_module.bootstrap
    t = unique_topic("lp-client")
    create_topic(b, t, partitions=1)
    c = consumer(b, fetch_wait_max_ms=5000)
    try:
        c.assign([TopicPartition(t, 0, OFFSET_END)])
        deadline = time.monotonic() + 30
        eof = False
        while not eof and time.monotonic() < deadline:
            m = c.poll(0.5)
            eof = m is not None and m.error() and m.error().code() == KafkaError._PARTITION_EOF
        assert eof
        time.sleep(0.5)
        t0 = time.monotonic()
        produce_values(b, t, [b"prompt"])
        got = None
        while got is None and time.monotonic() < t0 + 20:
            m = c.poll(0.2)
            if m is not None and not m.error():
                got = m
        elapsed = time.monotonic() - t0
    finally:
        c.close()
    assert got is not None and got.value() == b"prompt"
    assert elapsed < 3.0, f"new record took {elapsed:.2f}s to arrive (fetch.wait.max.ms=5000)"


# -- edge cases ----------------------------------------------------------------------------------
def test_null_keys_values_and_empty_values(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("nulls")
    create_topic(b, t, partitions=1)
    p = producer(b)
    cases = [(None, None), (b"k", None), (None, b"v"), (b"", b""), (b"k2", b""), (b"", b"v2")]
    for k, v in cases:
        p.produce(t, key=k, value=v, partition=0)
    flush_all(p)
    got = consume_partitions(b, t, [0], expected={0: len(cases)})[0]
    assert [(m.key(), m.value()) for m in got] == cases


def test_record_larger_than_fetch_limits_is_still_returned(weir_module):
    """KIP-74: a fetch returns the first batch even if it is larger than the fetch limits."""
    b = weir_module.bootstrap
    t = unique_topic("bigrec")
    create_topic(b, t, partitions=1)
    big = random.Random(5).randbytes(900_000)
    produce_values(b, t, [b"small-before", big, b"small-after"], linger_ms=0,
                   message_max_bytes=1_000_000)
    got = consume_partitions(b, t, [0], expected={0: 3}, fetch_max_bytes=1024,
                             message_max_bytes=1000, max_partition_fetch_bytes=1024)[0]
    assert [m.value() for m in got] == [b"small-before", big, b"small-after"]
    # the same on the wire: limits of 100 bytes still return the whole first batch
    with kproto.Conn(weir_module.port, timeout=20) as c:
        (r,) = kproto.fetch_v5(c, t, 0, 1, max_wait_ms=100, max_bytes=100)
    assert r.error_code == 0, r
    batches = kproto.batch_record_counts(r.records or b"")
    assert batches and batches[0][0] <= 1 and len(r.records) > 900_000, \
        f"{len(r.records or b'')} bytes, batches {batches}"


def test_consume_from_the_middle_of_a_batch(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("mid")
    create_topic(b, t, partitions=1)
    p = producer(b, linger_ms=100, batch_num_messages=1000)
    for i in range(100):
        p.produce(t, value=b"m-%d" % i, partition=0)
    flush_all(p)
    for start in (1, 37, 99):
        got = consume_partitions(b, t, [0], start=start, expected={0: 100 - start})[0]
        assert [m.offset() for m in got] == list(range(start, 100))
        assert got[0].value() == b"m-%d" % start


def test_concurrent_producers_one_partition(weir_module):
    """Several producers appending to one partition at once: every record once, offsets
    contiguous, each producer's records in its own order."""
    b = weir_module.bootstrap
    t = unique_topic("conc")
    create_topic(b, t, partitions=1)
    n_producers, per = 6, 3000
    errors = []

    def run(pi):
        try:
            produce_values(b, t, [b"p%d-%05d" % (pi, i) for i in range(per)], linger_ms=1)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(pi,)) for pi in range(n_producers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    total = n_producers * per
    assert watermarks(b, t, 0) == (0, total)
    got = consume_partitions(b, t, [0], expected={0: total})[0]
    assert [m.offset() for m in got] == list(range(total))
    for pi in range(n_producers):
        mine = [m.value() for m in got if m.value().startswith(b"p%d-" % pi)]
        assert mine == [b"p%d-%05d" % (pi, i) for i in range(per)], f"producer {pi}"


def test_tailing_consumer_sees_every_record_in_order(weir_module):
    """A consumer reading at the tail while records are produced sees each exactly once."""
    b = weir_module.bootstrap
    t = unique_topic("tail")
    create_topic(b, t, partitions=2)
    n = 20_000
    result = {}

    def consume():
        try:
            result["got"] = consume_partitions(b, t, [0, 1], expected={0: n // 2, 1: n // 2},
                                               timeout=120)
        except BaseException as e:
            result["error"] = e

    th = threading.Thread(target=consume)
    th.start()
    time.sleep(0.5)
    p = producer(b, linger_ms=1)
    for i in range(n):
        while True:
            try:
                p.produce(t, value=b"tail-%05d" % i, partition=i % 2)
                break
            except BufferError:
                p.poll(0.05)
        if i % 100 == 0:
            p.poll(0)
            time.sleep(0.001)
    flush_all(p)
    th.join(150)
    assert not th.is_alive()
    if "error" in result:
        raise result["error"]
    for part in (0, 1):
        msgs = result["got"][part]
        assert [m.offset() for m in msgs] == list(range(n // 2))
        assert [m.value() for m in msgs] == [b"tail-%05d" % i for i in range(part, n, 2)]


def test_many_partitions(weir_module):
    b = weir_module.bootstrap
    t = unique_topic("wide")
    parts = 64
    create_topic(b, t, partitions=parts)
    p = producer(b, linger_ms=20)
    for i in range(parts * 20):
        p.produce(t, value=b"w-%d" % i, partition=i % parts)
    flush_all(p)
    got = consume_partitions(b, t, list(range(parts)), expected={k: 20 for k in range(parts)})
    for part in range(parts):
        assert [m.value() for m in got[part]] == [b"w-%d" % i for i in range(part, parts * 20, parts)]
