"""Client-side helpers shared by the end-to-end tests (confluent-kafka unless named)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException,
                             Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

E2E_DIR = Path(__file__).resolve().parent
JS_DIR = E2E_DIR / "js"


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# librdkafka's own log lines go to Python logging (pytest shows them for failed tests only)
# instead of stderr, where reconnect attempts to a stopped server would flood the output.
RDKAFKA_LOG = logging.getLogger("rdkafka")

_ADMINS: dict[str, AdminClient] = {}


def forget_admin(bootstrap: str) -> None:
    """Drop the cached AdminClient of a server that is stopped for good."""
    _ADMINS.pop(bootstrap, None)


def admin(bootstrap: str) -> AdminClient:
    """A cached AdminClient per bootstrap address.

    Cached because a librdkafka handle that is garbage-collected while its futures are
    pending fails them with _DESTROY, and `admin(b).create_topics(...)` would do just that.
    """
    a = _ADMINS.get(bootstrap)
    if a is None:
        a = _ADMINS[bootstrap] = AdminClient(
            {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, "logger": RDKAFKA_LOG})
    return a


def create_topic(bootstrap: str, name: str, partitions: int = 1, config: dict | None = None,
                 timeout: float = 30) -> None:
    fs = admin(bootstrap).create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=timeout, request_timeout=timeout)
    fs[name].result(timeout=timeout)
    wait_for_topic(bootstrap, name, partitions)


def wait_for_topic(bootstrap: str, name: str, partitions: int, timeout: float = 30) -> None:
    """Until metadata shows `name` with `partitions` partitions, each with a leader."""
    a = admin(bootstrap)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = a.list_topics(topic=name, timeout=10)
        t = md.topics.get(name)
        last = t
        if t is not None and t.error is None and len(t.partitions) == partitions and all(
                p.leader >= 0 for p in t.partitions.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {name} not ready with {partitions} partitions: {last!r} "
                         f"{getattr(last, 'error', None)} "
                         f"{sorted(last.partitions) if last is not None else None}")


_PY_KEYS = {"on_delivery", "error_cb", "stats_cb", "throttle_cb", "logger", "on_commit"}


def _conf(overrides: dict) -> dict:
    """Python-friendly keyword names: linger_ms -> linger.ms (callbacks keep their names)."""
    return {(k if k in _PY_KEYS else k.replace("_", ".")): v for k, v in overrides.items()}


def producer(bootstrap: str, **overrides) -> Producer:
    conf = {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all", "logger": RDKAFKA_LOG}
    conf.update(_conf(overrides))
    return Producer(conf)


def consumer(bootstrap: str, **overrides) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": "weir-e2e-unused",  # required by the client; groups are never used
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        "logger": RDKAFKA_LOG,
    }
    conf.update(_conf(overrides))
    return Consumer(conf)


class DeliveryLog:
    """Collects delivery reports: key -> (partition, offset), and errors."""

    def __init__(self):
        self.ok: dict[bytes, tuple[int, int]] = {}
        self.errors: list[tuple[bytes | None, KafkaError]] = []

    def __call__(self, err, msg):
        if err is not None:
            self.errors.append((msg.key(), err))
        else:
            self.ok[msg.key()] = (msg.partition(), msg.offset())


def flush_all(p: Producer, timeout: float = 60) -> None:
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout}s flush"


def produce_values(bootstrap: str, topic: str, values: list[bytes], partition: int = 0,
                   keys: list[bytes] | None = None, **conf) -> list[int]:
    """Produce `values` in order to one partition, wait for all; return their offsets."""
    p = producer(bootstrap, **conf)
    offsets: list[int | None] = [None] * len(values)
    errors = []

    def cb(i):
        def f(err, msg):
            if err is not None:
                errors.append((i, err))
            else:
                offsets[i] = msg.offset()
        return f

    for i, v in enumerate(values):
        while True:
            try:
                p.produce(topic, value=v, key=keys[i] if keys else None, partition=partition,
                          on_delivery=cb(i))
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    flush_all(p)
    assert not errors, f"delivery errors: {errors[:5]}"
    return offsets


def consume_partitions(bootstrap: str, topic: str, partitions: list[int], *, start=OFFSET_BEGINNING,
                       expected: dict[int, int] | None = None, timeout: float = 60,
                       **overrides) -> dict[int, list]:
    """Read the given partitions from `start` until each reports end of partition.

    If `expected` ({partition: count}) is given, keep reading until at least that many
    messages arrived for each partition (and EOF was seen after them).
    Returns {partition: [Message, ...]} in offset order.
    """
    c = consumer(bootstrap, **overrides)
    try:
        c.assign([TopicPartition(topic, p, start) for p in partitions])
        out: dict[int, list] = {p: [] for p in partitions}
        at_eof: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = len(at_eof) == len(partitions) and all(
                len(out[p]) >= (expected or {}).get(p, 0) for p in partitions)
            if done:
                return out
            for m in c.consume(num_messages=1000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_eof.add(m.partition())
                        continue
                    raise KafkaException(err)
                at_eof.discard(m.partition())
                out[m.partition()].append(m)
        raise AssertionError(
            f"consume timed out after {timeout}s: got {({p: len(v) for p, v in out.items()})}, "
            f"expected {expected}, partitions at EOF {sorted(at_eof)}")
    finally:
        c.close()


def watermarks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    c = consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


def wait_until(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# -- kcat -----------------------------------------------------------------------------------
def kcat_path() -> str:
    path = shutil.which("kcat") or shutil.which("kafkacat")
    assert path, "kcat is not installed (scripts/test.sh installs it)"
    return path


def kcat(args: list[str], input_data: bytes | None = None, timeout: float = 60) -> bytes:
    proc = subprocess.run([kcat_path(), *args], input=input_data, capture_output=True,
                          timeout=timeout)
    assert proc.returncode == 0, (f"kcat {' '.join(args)} exited {proc.returncode}\n"
                                  f"stderr: {proc.stderr.decode(errors='replace')[-3000:]}")
    return proc.stdout


# -- kafkajs --------------------------------------------------------------------------------
def kafkajs(command: str, timeout: float = 90, **args):
    """Run tests/e2e/js/kafkajs_tool.js COMMAND with JSON args; return its JSON output."""
    node = shutil.which("node")
    assert node, "node is not installed"
    assert (JS_DIR / "node_modules" / "kafkajs").is_dir(), \
        "kafkajs is not installed: run `npm ci` in tests/e2e/js (scripts/test.sh does)"
    proc = subprocess.run([node, str(JS_DIR / "kafkajs_tool.js"), command, json.dumps(args)],
                          capture_output=True, timeout=timeout, cwd=JS_DIR,
                          env={**os.environ, "KAFKAJS_NO_PARTITIONER_WARNING": "1"})
    assert proc.returncode == 0, (f"kafkajs {command} exited {proc.returncode}\n"
                                  f"stdout: {proc.stdout.decode(errors='replace')[-2000:]}\n"
                                  f"stderr: {proc.stderr.decode(errors='replace')[-4000:]}")
    lines = [l for l in proc.stdout.decode().splitlines() if l.startswith("RESULT ")]
    assert lines, f"kafkajs {command} printed no RESULT line: {proc.stdout.decode()[-2000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def produce_numbered(bootstrap: str, topic: str, start: int, count: int, partitions: int,
                     **conf) -> tuple[dict[int, list[int]], list]:
    """Produces values start..start+count (key = value % partitions picks the partition);
    returns ({partition: [acknowledged values in offset order]}, [errors])."""
    p = producer(bootstrap, **{"enable.idempotence": True, "linger.ms": 5, **conf})
    acked: dict[int, list[tuple[int, int]]] = {}
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked.setdefault(msg.partition(), []).append((msg.offset(), int(msg.value())))

    for v in range(start, start + count):
        while True:
            try:
                p.produce(topic, value=str(v).encode(), partition=v % partitions, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    p.flush(120)
    return {part: [v for _, v in sorted(vals)] for part, vals in acked.items()}, errors


def read_all(bootstrap: str, topic: str, partitions: int, expected: dict[int, int]) -> dict[int, list[int]]:
    got = consume_partitions(bootstrap, topic, list(range(partitions)), expected=expected,
                             timeout=90)
    return {p: [int(m.value()) for m in msgs] for p, msgs in got.items()}


def assert_exactly_once(acked: dict[int, list[int]], read: dict[int, list[int]]) -> None:
    for part, values in read.items():
        assert len(values) == len(set(values)), f"partition {part} has duplicates"
        assert values == sorted(values), f"partition {part} is out of order"
        missing = set(acked.get(part, [])) - set(values)
        assert not missing, f"partition {part} lost acknowledged values {sorted(missing)[:10]}"
