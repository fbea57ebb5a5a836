"""Consumer groups with real clients: the classic rebalance protocol (eager and cooperative
assignors), committed offsets (durable across kill -9), session expiry, the initial rebalance
delay, kafka-python / aiokafka / kafkajs group consumers, group admin APIs and static
membership.

Servers run with `--group-initial-rebalance-delay-ms 200` unless a test is about the delay.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from confluent_kafka import (OFFSET_INVALID, Consumer, ConsumerGroupState, KafkaError,
                             KafkaException, TopicPartition)

from helpers import (JS_DIR, RDKAFKA_LOG, admin, create_topic, flush_all, produce_values,
                     producer, unique_topic, wait_until, watermarks)

FAST = ("--group-initial-rebalance-delay-ms", "200")


def unique_group(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def group_consumer_conf(bootstrap: str, group: str, **extra) -> dict:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100,
        "logger": RDKAFKA_LOG,
    }
    conf.update(extra)
    return conf


def committed_offsets(bootstrap: str, group: str, topic: str, partitions) -> dict[int, TopicPartition]:
    """OffsetFetch through confluent-kafka `committed()` with a consumer that never joins."""
    c = Consumer(group_consumer_conf(bootstrap, group))
    try:
        res = c.committed([TopicPartition(topic, p) for p in partitions], timeout=15)
        return {tp.partition: tp for tp in res}
    finally:
        c.close()


def end_offsets(bootstrap: str, topic: str, partitions) -> dict[int, int]:
    return {p: watermarks(bootstrap, topic, p)[1] for p in partitions}


# -- a confluent-kafka group member polled in its own thread --------------------------------
class Member(threading.Thread):
    """One confluent-kafka consumer in a group, polled in its own thread.

    Records assignment intervals (on_assign / on_revoke / on_lost, all called from this
    thread), every delivered record, and every successful synchronous commit.
    """

    def __init__(self, name: str, bootstrap: str, group: str, topic: str, **conf):
        super().__init__(name=name, daemon=True)
        self.topic = topic
        self.conf = group_consumer_conf(bootstrap, group, **conf)
        self.conf["error_cb"] = self._on_error
        self.lock = threading.Lock()
        self.assigned: set[int] = set()
        self.open: dict[int, float] = {}               # partition -> assigned at
        self.intervals: list[tuple[int, float, float]] = []  # (partition, start, end)
        self.deliveries: list[tuple[int, int, bytes, float]] = []  # (p, offset, value, t)
        self.commits: list[tuple[int, int, float]] = []  # (p, next offset, t) that succeeded
        self.commit_failures: list[str] = []
        self.errors: list[KafkaError] = []
        self.assign_events = 0
        self.revoke_events: list[tuple[float, list[int]]] = []
        self.stop_event = threading.Event()
        self.started_at: float | None = None
        self.closed_at: float | None = None
        self.exc: BaseException | None = None
        self.ready = threading.Event()

    # callbacks (run in this thread, from poll/consume/close)
    def _on_error(self, err):
        with self.lock:
            self.errors.append(err)

    def _on_assign(self, consumer, partitions):
        now = time.monotonic()
        with self.lock:
            self.assign_events += 1
            for tp in partitions:
                self.assigned.add(tp.partition)
                self.open.setdefault(tp.partition, now)

    def _on_revoke(self, consumer, partitions):
        now = time.monotonic()
        with self.lock:
            self.revoke_events.append((now, sorted(tp.partition for tp in partitions)))
            for tp in partitions:
                self.assigned.discard(tp.partition)
                start = self.open.pop(tp.partition, None)
                if start is not None:
                    self.intervals.append((tp.partition, start, now))

    def snapshot(self) -> set[int]:
        with self.lock:
            return set(self.assigned)

    def run(self):
        try:
            c = Consumer(self.conf)
            self.started_at = time.monotonic()
            c.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                        on_lost=self._on_revoke)
            self.ready.set()
            while not self.stop_event.is_set():
                # poll() returns one record or serves callbacks, never both: the time taken
                # after it returns orders deliveries against on_assign / on_revoke exactly
                m = c.poll(0.1)
                if m is None:
                    continue
                now = time.monotonic()
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        with self.lock:
                            self.errors.append(m.error())
                    continue
                with self.lock:
                    self.deliveries.append((m.partition(), m.offset(), m.value(), now))
                # processed: commit synchronously
                offsets = [TopicPartition(self.topic, m.partition(), m.offset() + 1)]
                try:
                    res = c.commit(offsets=offsets, asynchronous=False)
                except KafkaException as e:
                    with self.lock:
                        self.commit_failures.append(str(e))
                    continue
                done = time.monotonic()
                with self.lock:
                    for tp in res or []:
                        if tp.error is None:
                            self.commits.append((tp.partition, tp.offset, done))
                        else:
                            self.commit_failures.append(f"{tp.partition}: {tp.error}")
            c.close()
        except BaseException as e:  # surfaced by stop()
            self.exc = e
        finally:
            now = time.monotonic()
            self.closed_at = now
            with self.lock:
                for p, start in self.open.items():
                    self.intervals.append((p, start, now))
                self.open.clear()
                self.assigned.clear()
            self.ready.set()

    def stop(self, timeout: float = 60):
        self.stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), f"{self.name}: consumer did not close within {timeout}s"
        assert self.exc is None, f"{self.name}: consumer thread failed: {self.exc!r}"


def assert_exact_cover(members: list[Member], n_partitions: int):
    sets = {m.name: m.snapshot() for m in members}
    union = set().union(*sets.values())
    assert union == set(range(n_partitions)), f"assignments do not cover all: {sets}"
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not (sets[a] & sets[b]), f"{a} and {b} both hold {sets[a] & sets[b]}: {sets}"


def wait_balanced(members: list[Member], n_partitions: int, timeout: float, what: str):
    """Until the members' assignments are disjoint, cover every partition, and are balanced."""
    per = n_partitions // len(members)

    def ok():
        sets = [m.snapshot() for m in members]
        union = set().union(*sets)
        disjoint = sum(len(s) for s in sets) == len(union)
        balanced = all(len(s) in (per, per + (n_partitions % len(members) > 0)) for s in sets)
        return union == set(range(n_partitions)) and disjoint and balanced

    wait_until(ok, timeout, 0.1,
               f"{what}: {[(m.name, sorted(m.snapshot())) for m in members]}")
    assert_exact_cover(members, n_partitions)


class ContinuousProducer(threading.Thread):
    """Produces unique ids round-robin over the partitions until stopped."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: float = 300):
        super().__init__(daemon=True)
        self.p = producer(bootstrap, linger_ms=5)
        self.topic, self.partitions, self.rate = topic, partitions, rate
        self.delivered: dict[bytes, tuple[int, int]] = {}
        self.errors = []
        self.stop_event = threading.Event()
        self.n = 0

    def _cb(self, err, msg):
        if err is not None:
            self.errors.append(err)
        else:
            self.delivered[msg.value()] = (msg.partition(), msg.offset())

    def run(self):
        interval = 1.0 / self.rate
        while not self.stop_event.is_set():
            value = b"id-%08d" % self.n
            self.p.produce(self.topic, value=value, partition=self.n % self.partitions,
                           on_delivery=self._cb)
            self.n += 1
            self.p.poll(0)
            time.sleep(interval)
        flush_all(self.p)

    def stop(self):
        self.stop_event.set()
        self.join(90)
        assert not self.is_alive(), "producer did not finish"
        assert not self.errors, f"delivery errors: {self.errors[:5]}"
        assert len(self.delivered) == self.n


# -- 1. rebalancing under load with three assignors -----------------------------------------
@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_rebalance_exact_cover_no_overlap_no_redelivery(weir_factory, strategy):
    server = weir_factory(*FAST)
    b = server.bootstrap
    n_parts = 12
    topic = unique_topic(f"grp-{strategy}")
    group = unique_group(f"g-{strategy}")
    create_topic(b, topic, partitions=n_parts)

    prod = ContinuousProducer(b, topic, n_parts)
    conf = {"partition.assignment.strategy": strategy}
    members = [Member(f"c{i}", b, group, topic, **conf) for i in range(3)]
    everyone = list(members)
    try:
        prod.start()
        for m in members:
            m.start()
        wait_balanced(members, n_parts, 45, "three members never covered all 12 partitions")
        time.sleep(1.5)  # keep consuming and committing in the stable group
        assert_exact_cover(members, n_parts)

        # a fourth member joins
        fourth = Member("c3", b, group, topic, **conf)
        everyone.append(fourth)
        members.append(fourth)
        fourth.start()
        wait_balanced(members, n_parts, 45, "after a fourth member joined")
        time.sleep(1.5)

        # one of the first three leaves (close() sends LeaveGroup)
        leaver = members.pop(0)
        leaver.stop()
        wait_balanced(members, n_parts, 45, "after a member left")
        time.sleep(1.5)
        assert_exact_cover(members, n_parts)

        # stop producing; the remaining members consume everything and commit it
        prod.stop()
        ends = end_offsets(b, topic, range(n_parts))
        assert sum(ends.values()) == prod.n

        def drained():
            got = set()
            for m in everyone:
                with m.lock:
                    got.update(v for _, _, v, _ in m.deliveries)
            return len(got) >= prod.n
        wait_until(drained, 60, 0.2, "every produced record consumed")

        def all_committed():
            last: dict[int, int] = {}
            for m in members:
                with m.lock:
                    for p, off, _ in m.commits:
                        last[p] = max(last.get(p, -1), off)
            return all(last.get(p) == ends[p] for p in range(n_parts))
        wait_until(all_committed, 30, 0.2, "the end offsets committed")
    finally:
        if prod.is_alive():
            prod.stop_event.set()
        for m in everyone:
            m.stop_event.set()
        for m in everyone:
            m.join(60)
    for m in everyone:
        assert not m.is_alive(), f"{m.name} did not close"
        assert m.exc is None, f"{m.name}: {m.exc!r}"

    print(f"{strategy}: produced {prod.n}, " + ", ".join(
        f"{m.name}: {len(m.deliveries)} delivered, {len(m.commits)} commits, "
        f"failed commits {m.commit_failures}, {m.assign_events} assigns, "
        f"{len(m.revoke_events)} revokes" for m in everyone))

    # committed offsets on the server are the end offsets
    committed = committed_offsets(b, group, topic, range(n_parts))
    assert {p: tp.offset for p, tp in committed.items()} == ends

    # every produced record was delivered
    delivered_values = set()
    for m in everyone:
        delivered_values.update(v for _, _, v, _ in m.deliveries)
    missing = set(prod.delivered) - delivered_values
    assert not missing, f"{len(missing)} records never delivered, e.g. {sorted(missing)[:5]}"

    # (a) no two members held a partition at the same time
    overlaps = []
    for p in range(n_parts):
        iv = [(m.name, s, e) for m in everyone for (q, s, e) in m.intervals if q == p]
        for i, (na, sa, ea) in enumerate(iv):
            for nb, sb, eb in iv[i + 1:]:
                if na != nb and sa < eb and sb < ea:
                    overlaps.append((p, na, round(sa, 3), round(ea, 3), nb, round(sb, 3),
                                     round(eb, 3)))
    assert not overlaps, f"partitions held by two members at once: {overlaps[:10]}"

    # (b) every delivery happened while the member held the partition
    outside = []
    for m in everyone:
        for p, off, v, t in m.deliveries:
            if not any(q == p and s <= t <= e for q, s, e in m.intervals):
                outside.append((m.name, p, off, v))
    assert not outside, f"records delivered for partitions not assigned: {outside[:10]}"

    # (c) nothing below a committed offset is delivered again after the commit
    commits_by_p: dict[int, list[tuple[int, float, str]]] = {}
    for m in everyone:
        for p, off, t in m.commits:
            commits_by_p.setdefault(p, []).append((off, t, m.name))
    redelivered = []
    for m in everyone:
        for p, off, v, t in m.deliveries:
            for c_off, c_t, c_name in commits_by_p.get(p, []):
                if c_t < t and off < c_off:
                    redelivered.append((v, p, off, m.name, f"after {c_name} committed {c_off}"))
                    break
    assert not redelivered, (f"{len(redelivered)} committed records delivered again: "
                             f"{redelivered[:10]}")

    # each member's commits succeeded at least once; failures are only rebalance-related
    for m in everyone:
        assert m.commits, f"{m.name} never committed"
        fatal = [e for e in m.errors if e.fatal()]
        assert not fatal, f"{m.name}: fatal errors {fatal}"


# -- 2. committed offsets survive kill -9 ----------------------------------------------------
@pytest.mark.timeout(180)
def test_committed_offsets_survive_kill9_and_resume(weir_factory):
    server = weir_factory(*FAST)
    b = server.bootstrap
    n_parts = 4
    topic = unique_topic("grp-durable")
    group = unique_group("g-durable")
    create_topic(b, topic, partitions=n_parts)
    for p in range(n_parts):
        produce_values(b, topic, [b"p%d-o%d" % (p, i) for i in range(10)], partition=p)

    c = Consumer(group_consumer_conf(b, group))
    c.subscribe([topic])
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while len(seen) < n_parts and time.monotonic() < deadline:
        for m in c.consume(100, timeout=0.5):
            if m.error() is None:
                seen.add(m.partition())
    assert len(seen) == n_parts, f"records only from partitions {seen}"
    want = {p: 3 + p for p in range(n_parts)}
    res = c.commit(offsets=[TopicPartition(topic, p, o, metadata=f"meta-{p}")
                            for p, o in want.items()], asynchronous=False)
    assert all(tp.error is None for tp in res), res
    before = committed_offsets(b, group, topic, range(n_parts))
    assert {p: tp.offset for p, tp in before.items()} == want
    assert {p: tp.metadata for p, tp in before.items()} == {p: f"meta-{p}" for p in want}

    # kafka-python commits for a second group outside group management (generation -1)
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.structs import OffsetAndMetadata
    group2 = unique_group("g-durable-kp")
    want2 = {p: 7 - p for p in range(n_parts)}
    kc = KafkaConsumer(bootstrap_servers=b, group_id=group2, enable_auto_commit=False)
    try:
        kc.commit({KTP(topic, p): OffsetAndMetadata(o, f"kp-{p}", -1) for p, o in want2.items()})
    finally:
        kc.close()

    server.kill9()
    server.start()
    c.close()  # the old member: its group membership did not survive the restart

    after = committed_offsets(b, group, topic, range(n_parts))
    assert {p: tp.offset for p, tp in after.items()} == want, after
    assert {p: tp.metadata for p, tp in after.items()} == {p: f"meta-{p}" for p in want}, after

    # kafka-python's OffsetFetch (v8) returns the metadata too. confluent-kafka (2.16.1) sends
    # the metadata string with its C terminator (metadata_size = strlen + 1) and hides it when
    # reading back, so kafka-python sees a trailing NUL on what confluent-kafka committed.
    ka = KafkaAdminClient(bootstrap_servers=b, client_id="weir-e2e-groups")
    try:
        offs = ka.list_group_offsets({group: None, group2: None})
    finally:
        ka.close()
    got = {tp.partition: (om.offset, om.metadata) for tp, om in offs[group].items()
           if tp.topic == topic}
    assert {p: (o, m.rstrip("\x00")) for p, (o, m) in got.items()} == \
        {p: (o, f"meta-{p}") for p, o in want.items()}, got
    # what kafka-python committed comes back byte for byte
    assert {tp.partition: (om.offset, om.metadata) for tp, om in offs[group2].items()
            if tp.topic == topic} == {p: (o, f"kp-{p}") for p, o in want2.items()}

    # a new member of the group resumes exactly at the committed offsets
    c2 = Consumer(group_consumer_conf(b, group))
    try:
        c2.subscribe([topic])
        first: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while len(first) < n_parts and time.monotonic() < deadline:
            for m in c2.consume(100, timeout=0.5):
                if m.error() is None:
                    first.setdefault(m.partition(), m.offset())
        assert first == want, f"first offsets after restart {first}, committed {want}"
        res = c2.committed([TopicPartition(topic, p) for p in range(n_parts)], timeout=15)
        assert {tp.partition: (tp.offset, tp.metadata) for tp in res} == \
            {p: (o, f"meta-{p}") for p, o in want.items()}
    finally:
        c2.close()


# -- 3. a member that stops heartbeating is removed after session.timeout.ms ---------------
CHILD_CONSUMER = r"""
import json, sys, time
from confluent_kafka import Consumer
bootstrap, group, topic = sys.argv[1:4]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
              "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
              "heartbeat.interval.ms": 500, "client.id": "child"})
def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()
def on_assign(consumer, parts):
    out(event="assign", partitions=sorted(p.partition for p in parts), t=time.time())
def on_revoke(consumer, parts):
    out(event="revoke", partitions=sorted(p.partition for p in parts), t=time.time())
c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
out(event="subscribed")
while True:
    c.poll(0.2)
"""


@pytest.mark.timeout(120)
def test_member_without_heartbeats_is_removed_after_session_timeout(weir_factory):
    server = weir_factory(*FAST)
    b = server.bootstrap
    n_parts = 6
    topic = unique_topic("grp-session")
    group = unique_group("g-session")
    create_topic(b, topic, partitions=n_parts)

    local = Member("local", b, group, topic, **{"session.timeout.ms": 6000,
                                                "heartbeat.interval.ms": 500})
    child = subprocess.Popen([sys.executable, "-c", CHILD_CONSUMER, b, group, topic],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    child_assigned: set[int] = set()

    def reader():
        for line in child.stdout:
            lines.put(json.loads(line))
    threading.Thread(target=reader, daemon=True).start()

    def child_state():
        while True:
            try:
                ev = lines.get_nowait()
            except queue.Empty:
                return set(child_assigned)
            if ev["event"] == "assign":
                child_assigned.update(ev["partitions"])
            elif ev["event"] == "revoke":
                child_assigned.difference_update(ev["partitions"])

    stopped = False
    try:
        local.start()
        wait_until(lambda: (lambda cs, ls: cs and ls and not (cs & ls)
                            and (cs | ls) == set(range(n_parts)))(child_state(), local.snapshot()),
                   45, 0.1, "both members assigned")
        held_by_child = child_state()
        assert held_by_child and local.snapshot() == set(range(n_parts)) - held_by_child

        os.kill(child.pid, signal.SIGSTOP)
        stopped = True
        t_stop = time.monotonic()
        wait_until(lambda: local.snapshot() == set(range(n_parts)), 6 + 6, 0.05,
                   "the remaining member to get every partition within session timeout + 6 s")
        took = time.monotonic() - t_stop
        # not before the session timeout (6 s) minus the child's heartbeat interval (0.5 s)
        assert took > 4.5, f"partitions moved {took:.1f}s after the member stopped (session 6s)"
        print(f"partitions moved {took:.2f}s after SIGSTOP (session.timeout.ms 6000)")
    finally:
        if stopped:
            os.kill(child.pid, signal.SIGCONT)
        child.kill()
        child.wait(10)
        local.stop()


# -- 4. the initial rebalance delay of a new group -------------------------------------------
def _time_to_first_record(bootstrap: str, topic: str) -> float:
    c = Consumer(group_consumer_conf(bootstrap, unique_group("g-delay")))
    try:
        t0 = time.monotonic()
        c.subscribe([topic])
        while time.monotonic() - t0 < 30:
            m = c.poll(0.05)
            if m is not None and m.error() is None:
                return time.monotonic() - t0
        raise AssertionError("no record within 30 s")
    finally:
        c.close()


@pytest.mark.timeout(120)
def test_initial_rebalance_delay_default_3000ms(weir_factory):
    server = weir_factory()  # the default delay, 3000 ms
    topic = unique_topic("grp-delay")
    create_topic(server.bootstrap, topic, partitions=1)
    produce_values(server.bootstrap, topic, [b"x"] * 5)
    took = _time_to_first_record(server.bootstrap, topic)
    print(f"first record after {took:.2f}s (delay 3000 ms)")
    assert 2.5 < took < 3.0 + 2.0, f"first record after {took:.2f}s with the 3000 ms default delay"


@pytest.mark.timeout(60)
def test_initial_rebalance_delay_zero(weir_factory):
    server = weir_factory("--group-initial-rebalance-delay-ms", "0")
    topic = unique_topic("grp-nodelay")
    create_topic(server.bootstrap, topic, partitions=1)
    produce_values(server.bootstrap, topic, [b"x"] * 5)
    took = _time_to_first_record(server.bootstrap, topic)
    print(f"first record after {took:.2f}s (delay 0)")
    assert took < 2.0, f"first record after {took:.2f}s with no initial delay"


# -- 5. kafka-python, aiokafka and kafkajs group consumers -----------------------------------
N_OTHER = 300


def _produce_spread(b: str, topic: str, n_parts: int, n: int, tag: str) -> set[bytes]:
    values = set()
    per = n // n_parts
    for p in range(n_parts):
        vals = [f"{tag}-{p}-{i}".encode() for i in range(per)]
        produce_values(b, topic, vals, partition=p)
        values.update(vals)
    return values


@pytest.mark.timeout(120)
def test_kafka_python_group_consumer(weir_factory):
    from kafka import KafkaConsumer
    server = weir_factory(*FAST)
    b = server.bootstrap
    topic, group = unique_topic("grp-kp"), unique_group("g-kp")
    create_topic(b, topic, partitions=3)
    values = _produce_spread(b, topic, 3, N_OTHER, "kp")

    c = KafkaConsumer(bootstrap_servers=b, group_id=group, enable_auto_commit=False,
                      auto_offset_reset="earliest", client_id="weir-e2e-kp",
                      session_timeout_ms=10000, heartbeat_interval_ms=1000)
    got = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(got) < N_OTHER and time.monotonic() < deadline:
            batch = c.poll(timeout_ms=500)
            for recs in batch.values():
                got.extend(r.value for r in recs)
            if batch:
                c.commit()
        assert sorted(c.assignment()) and {tp.partition for tp in c.assignment()} == {0, 1, 2}
    finally:
        c.close()
    assert len(got) == N_OTHER and set(got) == values
    committed = committed_offsets(b, group, topic, range(3))
    assert {p: tp.offset for p, tp in committed.items()} == {p: N_OTHER // 3 for p in range(3)}


@pytest.mark.timeout(120)
def test_aiokafka_group_consumer(weir_factory):
    from aiokafka import AIOKafkaConsumer
    server = weir_factory(*FAST)
    b = server.bootstrap
    topic, group = unique_topic("grp-aio"), unique_group("g-aio")
    create_topic(b, topic, partitions=3)
    values = _produce_spread(b, topic, 3, N_OTHER, "aio")

    async def run():
        c = AIOKafkaConsumer(topic, bootstrap_servers=b, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             session_timeout_ms=10000, heartbeat_interval_ms=1000)
        await c.start()
        got = []
        try:
            deadline = time.monotonic() + 60
            while len(got) < N_OTHER and time.monotonic() < deadline:
                batch = await c.getmany(timeout_ms=500)
                for recs in batch.values():
                    got.extend(r.value for r in recs)
                if batch:
                    await c.commit()
            assignment = {tp.partition for tp in c.assignment()}
        finally:
            await c.stop()
        return got, assignment

    got, assignment = asyncio.run(run())
    assert assignment == {0, 1, 2}
    assert len(got) == N_OTHER and set(got) == values
    committed = committed_offsets(b, group, topic, range(3))
    assert {p: tp.offset for p, tp in committed.items()} == {p: N_OTHER // 3 for p in range(3)}


@pytest.mark.timeout(150)
def test_kafkajs_group_consumer(weir_factory):
    node = shutil.which("node")
    assert node, "node is not installed"
    server = weir_factory(*FAST)
    b = server.bootstrap
    topic, group = unique_topic("grp-js"), unique_group("g-js")
    create_topic(b, topic, partitions=3)
    values = _produce_spread(b, topic, 3, N_OTHER, "js")

    args = {"brokers": [b], "topic": topic, "groupId": group, "count": N_OTHER,
            "timeoutMs": 90000}
    proc = subprocess.run([node, str(JS_DIR / "kafkajs_group.js"), json.dumps(args)],
                          capture_output=True, timeout=120, cwd=JS_DIR,
                          env={**os.environ, "KAFKAJS_NO_PARTITIONER_WARNING": "1"})
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, (f"kafkajs_group.js exited {proc.returncode}\n{out[-3000:]}\n"
                                  f"stderr: {proc.stderr.decode(errors='replace')[-3000:]}")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    joins = [e for e in events if e["event"] == "join"]
    assert joins and sorted(joins[-1]["assignment"][topic]) == [0, 1, 2], joins
    got = [e["value"].encode() for e in events if e["event"] == "message"]
    assert len(got) == N_OTHER and set(got) == values
    assert events[-1]["event"] == "done"
    committed = committed_offsets(b, group, topic, range(3))
    assert {p: tp.offset for p, tp in committed.items()} == {p: N_OTHER // 3 for p in range(3)}


# -- 6. group admin APIs ----------------------------------------------------------------------
def _kafka_error_code(exc: BaseException) -> int | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].code()
    return None


@pytest.mark.timeout(180)
def test_group_admin_apis(weir_factory):
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP
    server = weir_factory(*FAST)
    b = server.bootstrap
    n_parts = 3
    topic, group = unique_topic("grp-admin"), unique_group("g-admin")
    create_topic(b, topic, partitions=n_parts)
    for p in range(n_parts):
        produce_values(b, topic, [b"a%d-%d" % (p, i) for i in range(20)], partition=p)
    a = admin(b)
    ka = KafkaAdminClient(bootstrap_servers=b, client_id="weir-e2e-groups-admin")
    members = [Member(f"m{i}", b, group, topic, **{"client.id": f"admin-member-{i}"})
               for i in range(2)]
    try:
        for m in members:
            m.start()
        wait_balanced(members, n_parts, 45, "two members never covered the topic")
        # both commit everything they read
        def all_committed():
            last = {}
            for m in members:
                with m.lock:
                    for p, off, _ in m.commits:
                        last[p] = max(last.get(p, 0), off)
            return last == {p: 20 for p in range(n_parts)}
        wait_until(all_committed, 30, 0.1, "the members committed every record")
        time.sleep(0.5)

        # ListGroups
        listing = a.list_consumer_groups(request_timeout=15).result()
        assert not listing.errors, listing.errors
        mine = [g for g in listing.valid if g.group_id == group]
        assert len(mine) == 1, [g.group_id for g in listing.valid]
        assert mine[0].state == ConsumerGroupState.STABLE, mine[0].state
        assert not mine[0].is_simple_consumer_group

        # DescribeGroups
        desc = a.describe_consumer_groups([group], request_timeout=15)[group].result()
        assert desc.state == ConsumerGroupState.STABLE
        assert desc.partition_assignor in ("range", "roundrobin"), desc.partition_assignor
        assert len(desc.members) == 2
        assert sorted(md.client_id for md in desc.members) == ["admin-member-0", "admin-member-1"]
        by_client = {md.client_id: {tp.partition for tp in md.assignment.topic_partitions
                                    if tp.topic == topic} for md in desc.members}
        assert by_client == {f"admin-member-{i}": members[i].snapshot() for i in range(2)}

        # kafka-python: list_groups / describe_groups / list_group_offsets
        kgroups = [g for g in ka.list_groups() if g["group_id"] == group]
        assert len(kgroups) == 1, kgroups
        assert kgroups[0]["group_state"] == "Stable" and kgroups[0]["protocol_type"] == "consumer"
        kd = ka.describe_groups([group])[group]
        assert kd["error"] is None and kd["group_state"] == "Stable", kd
        assert kd["protocol_type"] == "consumer" and kd["protocol_data"] == desc.partition_assignor
        kmembers = {m["client_id"]: m for m in kd["members"]}
        assert sorted(kmembers) == ["admin-member-0", "admin-member-1"], kd
        for i in range(2):
            km = kmembers[f"admin-member-{i}"]
            assert km["member_metadata"]["topics"] == [topic], km
            parts = {p for a in km["member_assignment"]["assigned_partitions"]
                     if a["topic"] == topic for p in a["partitions"]}
            assert parts == members[i].snapshot(), km
        koffs = ka.list_group_offsets({group: None})[group]
        assert {tp.partition: om.offset for tp, om in koffs.items() if tp.topic == topic} == \
            {p: 20 for p in range(n_parts)}

        # DeleteGroups on an active group: NON_EMPTY_GROUP
        with pytest.raises(KafkaException) as ei:
            a.delete_consumer_groups([group], request_timeout=15)[group].result()
        assert _kafka_error_code(ei.value) == KafkaError.NON_EMPTY_GROUP, ei.value

        # OffsetDelete while members are subscribed: GROUP_SUBSCRIBED_TO_TOPIC
        res = ka.delete_group_offsets(group, [KTP(topic, 0)])
        errs = {tp.partition: err for tp, err in res.items()}
        assert errs[0].__name__ in ("GroupSubscribedToTopicError",), errs
        still = committed_offsets(b, group, topic, range(n_parts))
        assert still[0].offset == 20
    finally:
        for m in members:
            m.stop()

    try:
        def empty():
            d = a.describe_consumer_groups([group], request_timeout=15)[group].result()
            return d.state == ConsumerGroupState.EMPTY and not d.members
        wait_until(empty, 20, 0.2, "group Empty after its members closed")

        # OffsetDelete on the empty group removes exactly one partition's offset
        res = ka.delete_group_offsets(group, [KTP(topic, 0)])
        errs = {tp.partition: err.__name__ for tp, err in res.items()}
        assert errs == {0: "NoError"}, errs
        left = committed_offsets(b, group, topic, range(n_parts))
        assert {p: tp.offset for p, tp in left.items()} == {0: OFFSET_INVALID, 1: 20, 2: 20}

        # DeleteGroups on the empty group succeeds; its offsets are gone
        a.delete_consumer_groups([group], request_timeout=15)[group].result()
        gone = committed_offsets(b, group, topic, range(n_parts))
        assert {p: tp.offset for p, tp in gone.items()} == {p: OFFSET_INVALID for p in range(n_parts)}
        listing = a.list_consumer_groups(request_timeout=15).result()
        assert group not in [g.group_id for g in listing.valid]
    finally:
        ka.close()


# -- 7. static membership ---------------------------------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("restarted,strategy", [("follower", "range"),
                                                ("follower", "cooperative-sticky"),
                                                ("leader", "range")])
def test_static_membership_rejoin_and_fencing(weir_factory, restarted, strategy):
    """A static member restarted within the session timeout gets its partitions back without
    a rebalance (Kafka: a known static member joining a Stable group whose selected protocol
    does not change gets the current generation; the leader too, since KIP-814); a newer
    instance with the same group.instance.id fences the older one."""
    server = weir_factory(*FAST)
    b = server.bootstrap
    n_parts = 6
    topic, group = unique_topic("grp-static"), unique_group("g-static")
    create_topic(b, topic, partitions=n_parts)
    static = {"session.timeout.ms": 15000, "partition.assignment.strategy": strategy}

    def member(name, iid):
        return Member(name, b, group, topic, **{**static, "group.instance.id": iid})

    a = member("A", "inst-a")
    bm = member("B", "inst-b")
    everyone = [a, bm]
    try:
        # A first (it is elected leader), then B
        a.start()
        wait_until(lambda: a.snapshot() == set(range(n_parts)), 30, 0.1, "A alone owns all")
        bm.start()
        wait_balanced([a, bm], n_parts, 45, "A and B never split the partitions")
        time.sleep(2)
        old, untouched = (bm, a) if restarted == "follower" else (a, bm)
        old_parts, untouched_parts = old.snapshot(), untouched.snapshot()
        revokes, assigns = len(untouched.revoke_events), untouched.assign_events

        # restart one with the same instance id within the session timeout
        # (librdkafka sends no LeaveGroup when a static member closes)
        old.stop()
        new = member(old.name + "2", old.conf["group.instance.id"])
        everyone.append(new)
        new.start()
        wait_until(lambda: new.snapshot() == old_parts, 30, 0.1,
                   f"the restarted static member to get {sorted(old_parts)} back")
        time.sleep(3)  # long enough for a (wrong) rebalance to reach the other one
        assert new.snapshot() == old_parts
        assert untouched.snapshot() == untouched_parts
        assert len(untouched.revoke_events) == revokes, \
            f"the untouched member was revoked: {untouched.revoke_events[revokes:]}"
        assert untouched.assign_events == assigns, \
            "the untouched member went through a rebalance (on_assign called again)"
        log = server.log_path.read_text(errors="replace")
        assert "member left" not in log, "a static member's close sent LeaveGroup?"
        desc = admin(b).describe_consumer_groups([group], request_timeout=15)[group].result()
        assert sorted(md.group_instance_id for md in desc.members) == ["inst-a", "inst-b"]
        assert desc.state == ConsumerGroupState.STABLE

        # a second consumer with an instance id in use fences the first
        victim = untouched
        intruder = member(victim.name + "-intruder", victim.conf["group.instance.id"])
        everyone.append(intruder)
        intruder.start()

        # librdkafka turns FENCED_INSTANCE_ID into a fatal error: consume() returns _FATAL
        # with the broker error's text ("Static consumer fenced by other consumer with same
        # group.instance.id"); error_cb may also report it.
        def fenced():
            with victim.lock:
                return [e for e in victim.errors if e.code() == KafkaError.FENCED_INSTANCE_ID
                        or (e.code() == KafkaError._FATAL and "fenced" in str(e).lower())]
        deadline = time.monotonic() + 20
        while not fenced() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fenced(), f"{victim.name} was not fenced; its errors: {victim.errors}"
        wait_balanced([new, intruder], n_parts, 45, "the live members never split the partitions")
    finally:
        for m in everyone:
            m.stop_event.set()
        for m in everyone:
            m.join(60)
    for m in everyone:
        assert not m.is_alive(), f"{m.name} did not close"


# -- KIP-848: group.protocol=consumer --------------------------------------------------------
@pytest.mark.timeout(180)
def test_consumer_protocol_kip848_assigns_every_partition_once(weir_factory):
    """librdkafka with group.protocol=consumer: server-side assignment, partitions move from a
    member to a newcomer only after release, every record is read exactly once."""
    server = weir_factory(*FAST)
    b = server.bootstrap
    n_parts = 6
    topic = unique_topic("kip848")
    group = unique_group("g-848")
    create_topic(b, topic, partitions=n_parts)
    values = _produce_spread(b, topic, n_parts, 600, "k848")
    first = Member("c848-0", b, group, topic)
    for k in ("session.timeout.ms", "heartbeat.interval.ms"):
        first.conf.pop(k, None)
    first.conf["group.protocol"] = "consumer"
    first.start()
    wait_until(lambda: len(first.snapshot()) == n_parts, 20, what="first member owns every partition")
    second = Member("c848-1", b, group, topic)
    for k in ("session.timeout.ms", "heartbeat.interval.ms"):
        second.conf.pop(k, None)
    second.conf["group.protocol"] = "consumer"
    second.start()

    def balanced():
        a, c = first.snapshot(), second.snapshot()
        return len(a) == 3 and len(c) == 3 and not (a & c)

    wait_until(balanced, 30, what="partitions split 3/3 between the two members")
    # Every record is delivered (committed progress is per member; nothing is read twice
    # after it was committed by another member).
    def all_read():
        with first.lock, second.lock:
            got = {v for (_, _, v, _) in first.deliveries + second.deliveries}
        return values <= got

    wait_until(all_read, 30, what="every record consumed")
    first.stop()
    second.stop()
    committed_then_reread = []
    for m in (first, second):
        for (p, next_offset, t) in m.commits:
            for other in (first, second):
                if other is m:
                    continue
                committed_then_reread += [(p, o) for (pp, o, _, td) in other.deliveries
                                          if pp == p and o < next_offset and td > t]
    assert not committed_then_reread, f"records re-read after being committed: {committed_then_reread[:5]}"
    # The group is visible as a consumer-protocol group while it exists.
    ends = end_offsets(b, topic, range(n_parts))
    got = committed_offsets(b, group, topic, range(n_parts))
    assert {p: tp.offset for p, tp in got.items()} == ends


# -- weir lag ------------------------------------------------------------------------------
def test_weir_lag_reports_committed_log_end_and_lag(weir_factory):
    from conftest import weir_bin
    server = weir_factory(*FAST)
    b = server.bootstrap
    topic = unique_topic("lag")
    group = unique_group("g-lag")
    create_topic(b, topic, partitions=2)
    produce_values(b, topic, [b"v%d" % i for i in range(10)], partition=0)
    produce_values(b, topic, [b"w%d" % i for i in range(4)], partition=1)
    c = Consumer(group_consumer_conf(b, group))
    res = c.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 4)], asynchronous=False)
    assert all(tp.error is None for tp in res)
    c.close()
    out = subprocess.run([str(weir_bin()), "lag", "--bootstrap-server", b, "--group", group, "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = sorted((json.loads(l) for l in out.stdout.splitlines() if l.strip()), key=lambda r: r["partition"])
    assert [(r["partition"], r["committed"], r["log_end"], r["lag"]) for r in rows] == [(0, 7, 10, 3), (1, 4, 4, 0)]
    assert all(r["group"] == group and r["topic"] == topic for r in rows)
    table = subprocess.run([str(weir_bin()), "lag", "--bootstrap-server", b],
                           capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    assert f"group {group}: total lag 3" in table.stdout
