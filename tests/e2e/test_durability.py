"""Durability: nothing acknowledged is lost across kill -9 and restart, offsets never fork or
skip, and graceful SIGTERM exits 0 with everything there after a restart."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import ConfigResource, ResourceType

from helpers import (admin, consume_partitions, create_topic, produce_values, producer,
                     unique_topic, watermarks)

PARTITIONS = 3
KILL_CYCLES = 3
ACKED_BEFORE_KILL = 3000    # more acknowledged records in each cycle before the kill
ACKED_AFTER_RESTART = 1000  # records acknowledged after a restart before the next cycle
MAX_IN_FLIGHT = 5000        # produced but not yet reported, to bound the producer's queue


@dataclass
class Attempt:
    seq: int
    partition: int
    sent_epoch: int                     # server incarnation when produce() was called
    acked: tuple[int, int] | None = None  # (partition, offset) from the delivery report
    acked_epoch: int | None = None
    error: KafkaError | None = None


@dataclass
class LoadState:
    partitions: int = PARTITIONS
    attempts: dict[int, Attempt] = field(default_factory=dict)
    epoch: int = 0                       # bumped by the main thread at each kill
    acked: int = 0
    reported: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    abort: bool = False                  # the test failed: drop what is queued and exit
    failure: BaseException | None = None
    last_error: str | None = None        # latest client or delivery error, for diagnostics


def value_of(seq: int) -> bytes:
    return b"dur-%08d-" % seq + b"p" * (seq % 200)


def seq_of(value: bytes) -> int:
    assert value.startswith(b"dur-"), value[:40]
    return int(value[4:12])


def producer_thread(bootstrap: str, topic: str, state: LoadState, conf: dict):
    try:
        def on_delivery(err, msg):
            a = state.attempts[seq_of(msg.value())]
            state.reported += 1
            if err is not None:
                a.error = err
                state.last_error = f"delivery of seq {a.seq}: {err}"
            else:
                a.acked = (msg.partition(), msg.offset())
                a.acked_epoch = state.epoch
                state.acked += 1

        def on_error(err):
            state.last_error = f"client error: {err}"
            if err.fatal():
                state.failure = AssertionError(f"fatal producer error: {err}")
                state.stop.set()

        p = producer(bootstrap, on_delivery=on_delivery, error_cb=on_error, linger_ms=5,
                     message_timeout_ms=180_000, request_timeout_ms=30_000,
                     reconnect_backoff_ms=100, reconnect_backoff_max_ms=500,
                     retry_backoff_ms=100, retry_backoff_max_ms=500,
                     message_send_max_retries=1_000_000, **conf)
        seq = 0
        while not state.stop.is_set() and not state.abort:
            if seq - state.reported >= MAX_IN_FLIGHT:
                p.poll(0.05)
                continue
            part = seq % state.partitions
            state.attempts[seq] = Attempt(seq, part, state.epoch)
            try:
                p.produce(topic, value=value_of(seq), partition=part)
            except BufferError:
                del state.attempts[seq]
                p.poll(0.05)
                continue
            seq += 1
            p.poll(0)
            if seq % 200 == 0:
                time.sleep(0.002)  # a steady load rather than one huge burst
        if state.abort:
            p.purge()
            p.flush(5)
            return
        deadline = time.monotonic() + 120
        while len(p) and time.monotonic() < deadline and not state.abort:
            p.flush(1)
        remaining = len(p)
        if remaining:
            raise AssertionError(f"{remaining} messages still queued 120 s after the load stopped")
    except BaseException as e:  # surfaced by the main thread
        state.failure = e


def wait_acked(state: LoadState, target: int, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.failure:
            raise state.failure
        if state.acked >= target:
            return
        time.sleep(0.02)
    raise AssertionError(f"{what}: only {state.acked} of {target} acknowledged after {timeout}s;"
                         f" last error: {state.last_error}")


def check_log(bootstrap: str, topic: str, state: LoadState, idempotent: bool):
    counts = {p: watermarks(bootstrap, topic, p)[1] for p in range(state.partitions)}
    got = consume_partitions(bootstrap, topic, list(range(state.partitions)), expected=counts,
                             timeout=180)
    where: dict[int, list[tuple[int, int]]] = {}  # seq -> [(partition, offset)]
    for part, msgs in got.items():
        offsets = [m.offset() for m in msgs]
        assert offsets == list(range(len(msgs))), \
            f"partition {part}: offsets not contiguous from 0 (gap or reuse)"
        assert len(msgs) == counts[part], f"partition {part}: high watermark {counts[part]}, " \
                                          f"read {len(msgs)}"
        for m in msgs:
            seq = seq_of(m.value())
            assert seq in state.attempts, f"record {m.value()[:20]!r} was never produced"
            assert m.value() == value_of(seq), f"value of seq {seq} corrupted"
            assert state.attempts[seq].partition == part, f"seq {seq} in the wrong partition"
            where.setdefault(seq, []).append((part, m.offset()))

    lost, misplaced, bad_dupes = [], [], []
    for seq, a in state.attempts.items():
        places = where.get(seq, [])
        if a.acked is not None:
            if not places:
                lost.append(seq)
            elif a.acked not in places:
                misplaced.append((seq, a.acked, places))
        if len(places) > 1:
            # Without idempotence a retried record may be written twice, but only one whose
            # attempt spanned a kill; with idempotence never.
            if idempotent or (a.acked is not None and a.sent_epoch == a.acked_epoch):
                bad_dupes.append((seq, places))
    acked = sum(1 for a in state.attempts.values() if a.acked is not None)
    failed = [a for a in state.attempts.values() if a.error is not None]
    assert not lost, f"{len(lost)} acknowledged records lost (of {acked}), e.g. seqs {lost[:10]}"
    assert not misplaced, f"{len(misplaced)} records not at their acknowledged offset: " \
                          f"{misplaced[:5]}"
    assert not bad_dupes, f"{len(bad_dupes)} duplicated records: {bad_dupes[:5]}"
    if idempotent:
        assert not failed, f"{len(failed)} records failed: {[str(a.error) for a in failed[:3]]}"
    dupes = sum(1 for v in where.values() if len(v) > 1)
    errors: dict[str, int] = {}
    for a in failed:
        errors[str(a.error)] = errors.get(str(a.error), 0) + 1
    print(f"\n{len(state.attempts)} produced, {acked} acknowledged, {len(failed)} failed "
          f"{errors}, {sum(len(v) for v in got.values())} stored, {dupes} stored twice")
    return acked, sum(len(v) for v in got.values())


@pytest.mark.timeout(600)
@pytest.mark.parametrize("acks,idempotent", [("all", True), ("all", False), ("1", False)],
                         ids=["acks-all-idempotent", "acks-all", "acks-1"])
def test_kill9_mid_load_loses_nothing_acknowledged(weir_factory, acks, idempotent):
    server = weir_factory()
    b = server.bootstrap
    t = unique_topic("dur")
    create_topic(b, t, partitions=PARTITIONS)

    state = LoadState()
    conf = {"acks": acks, "enable_idempotence": idempotent}
    if idempotent:
        conf["max_in_flight_requests_per_connection"] = 5
    th = threading.Thread(target=producer_thread, args=(b, t, state, conf), daemon=True)
    th.start()
    try:
        target = 0
        for cycle in range(KILL_CYCLES):
            target = state.acked + ACKED_BEFORE_KILL
            wait_acked(state, target, 90, f"cycle {cycle} before kill")
            server.kill9()
            state.epoch += 1
            time.sleep(0.5)
            server.restart()
            wait_acked(state, state.acked + ACKED_AFTER_RESTART, 120,
                       f"cycle {cycle} after restart")
        state.stop.set()
        th.join(150)
        assert not th.is_alive(), "producer thread did not finish"
        if state.failure:
            raise state.failure
    except BaseException:
        state.abort = True
        raise
    finally:
        state.stop.set()

    acked, stored = check_log(b, t, state, idempotent)
    assert acked >= KILL_CYCLES * (ACKED_BEFORE_KILL + ACKED_AFTER_RESTART)

    # and once more after a final crash with no load running
    server.kill9()
    server.restart()
    acked2, stored2 = check_log(b, t, state, idempotent)
    assert stored2 == stored, "the log changed across a crash with no writes"
    print(f"acknowledged {acked}, stored {stored} across {KILL_CYCLES} kill -9 cycles")


def test_sigterm_exits_zero_and_keeps_data(weir_factory):
    server = weir_factory()
    b = server.bootstrap
    t = unique_topic("term")
    create_topic(b, t, partitions=2, config={"retention.ms": "86400000"})
    values0 = [b"term-p0-%05d" % i for i in range(5000)]
    values1 = [b"term-p1-%05d" % i for i in range(3000)]
    produce_values(b, t, values0, partition=0, acks="1")
    produce_values(b, t, values1, partition=1, acks="all")
    server.terminate()  # asserts exit code 0
    server.start()
    assert watermarks(b, t, 0) == (0, len(values0))
    assert watermarks(b, t, 1) == (0, len(values1))
    got = consume_partitions(b, t, [0, 1], expected={0: len(values0), 1: len(values1)})
    assert [m.value() for m in got[0]] == values0
    assert [m.value() for m in got[1]] == values1

    # topic metadata and configs survive too, and new writes continue the offsets
    res = ConfigResource(ResourceType.TOPIC, t)
    entries = admin(b).describe_configs([res], request_timeout=30)[res].result(timeout=30)
    assert entries["retention.ms"].value == "86400000"
    assert produce_values(b, t, [b"after-restart"], partition=0) == [len(values0)]
    server.terminate()


def test_sigterm_while_producing(weir_factory):
    """SIGTERM during a load: exit 0 in time, and every acknowledged record is kept."""
    server = weir_factory()
    b = server.bootstrap
    t = unique_topic("term-load")
    create_topic(b, t, partitions=1)
    state = LoadState(partitions=1)
    th = threading.Thread(target=producer_thread, args=(b, t, state, {"acks": "all"}),
                          daemon=True)
    th.start()
    try:
        wait_acked(state, 2000, 60, "before SIGTERM")
        server.terminate()
        state.epoch += 1
        server.start()
        wait_acked(state, state.acked + 500, 60, "after restart")
    except BaseException:
        state.abort = True
        raise
    finally:
        state.stop.set()
    th.join(150)
    assert not th.is_alive()
    if state.failure:
        raise state.failure
    check_log(b, t, state, idempotent=False)


def test_metadata_changes_survive_kill9(weir_factory):
    """Topic creation and deletion, partition growth, config changes and DeleteRecords are
    all durable once acknowledged."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, NewPartitions)

    server = weir_factory()
    b = server.bootstrap
    a = admin(b)
    kept, grown, gone = unique_topic("meta-kept"), unique_topic("meta-grown"), unique_topic("meta-gone")
    create_topic(b, kept, partitions=2, config={"retention.ms": "7200000"})
    create_topic(b, grown, partitions=1)
    create_topic(b, gone, partitions=1)
    produce_values(b, kept, [b"k-%d" % i for i in range(50)], partition=0)
    produce_values(b, gone, [b"old-life-%d" % i for i in range(10)])

    a.create_partitions([NewPartitions(grown, 4)], request_timeout=30)[grown].result(timeout=30)
    res = ConfigResource(ResourceType.TOPIC, kept, incremental_configs=[
        ConfigEntry("max.message.bytes", "123456", incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([res], request_timeout=30)[res].result(timeout=30)
    list(a.delete_records([TopicPartition(kept, 0, 20)], request_timeout=30).values())[0] \
        .result(timeout=30)
    a.delete_topics([gone], operation_timeout=30, request_timeout=30)[gone].result(timeout=30)

    server.kill9()
    server.restart()

    md = admin(b).list_topics(timeout=10)
    assert kept in md.topics and grown in md.topics
    assert gone not in md.topics, "a deleted topic came back after a crash"
    assert len(md.topics[grown].partitions) == 4
    res = ConfigResource(ResourceType.TOPIC, kept)
    entries = admin(b).describe_configs([res], request_timeout=30)[res].result(timeout=30)
    assert entries["retention.ms"].value == "7200000"
    assert entries["max.message.bytes"].value == "123456"
    assert watermarks(b, kept, 0) == (20, 50)
    got = consume_partitions(b, kept, [0], expected={0: 30})[0]
    assert [m.value() for m in got] == [b"k-%d" % i for i in range(20, 50)]

    # a topic re-created under the deleted name does not see the old records
    create_topic(b, gone, partitions=1)
    assert watermarks(b, gone, 0) == (0, 0)
    produce_values(b, gone, [b"new-life"])
    server.kill9()
    server.restart()
    got = consume_partitions(b, gone, [0], expected={0: 1})[0]
    assert [m.value() for m in got] == [b"new-life"]
