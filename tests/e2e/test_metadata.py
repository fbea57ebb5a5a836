"""The metadata service in its own process and the DynamoDB backend.

- `weir metadata init` creates the DynamoDB tables, idempotently.
- `weir serve --metadata dynamodb://...` against a real DynamoDB-compatible server (moto on
  127.0.0.1): produce, consume, group offsets, kill -9 and restart.
- Metadata writes happen per flush, not per record or per batch (counted from the DynamoDB
  requests Weir reports on /metrics).
- `weir metadata` serves a backend over QUIC; `weir serve --metadata quic://...` uses it, and
  rides out a kill -9 of the metadata service without losing or duplicating an acknowledged
  record.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request

import pytest

from conftest import dynamodb_url, free_port, weir_bin
from helpers import (
    assert_exactly_once,
    consumer,
    create_topic,
    flush_all,
    produce_numbered,
    producer,
    read_all,
    unique_topic,
)


@pytest.fixture
def metadata_service(weir_service):
    def make(backend=None):
        return weir_service("metadata", *(["--backend", backend] if backend else []))

    return make


def metrics(admin_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'weir_metadata_dynamodb_requests_total\{operation="(\w+)"\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_metadata_init_creates_tables_once():
    prefix = f"init{os.getpid()}{int(time.time() * 1000) % 100000}"
    url = dynamodb_url(prefix)
    first = subprocess.run([str(weir_bin()), "metadata", "init", "--metadata", url],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert sorted(report["created"]) == sorted([f"{prefix}-meta", f"{prefix}-index"])
    again = subprocess.run([str(weir_bin()), "metadata", "init", "--metadata", url],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["created"] == []
    # A malformed URL is a clear error, not a crash.
    bad = subprocess.run([str(weir_bin()), "metadata", "init", "--metadata", "dynamodb://bad prefix!"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert bad.returncode != 0
    assert "table prefix" in bad.stderr


def test_dynamodb_backend_survives_kill9(weir_factory):
    url = dynamodb_url()
    weir = weir_factory("--metadata", url)
    topic = unique_topic("ddb")
    create_topic(weir.bootstrap, topic, partitions=4)
    acked, errors = produce_numbered(weir.bootstrap, topic, 0, 4000, 4)
    assert not errors, errors[:3]
    assert sum(len(v) for v in acked.values()) == 4000
    # A group reads half of each partition and commits.
    c = consumer(weir.bootstrap, **{"group.id": "ddb-group", "enable.auto.offset.store": True})
    c.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 2000 and time.monotonic() < deadline:
        for m in c.consume(500, timeout=1):
            if m.error() is None:
                seen += 1
    c.commit(asynchronous=False)
    committed = {tp.partition: tp.offset for tp in c.committed(c.assignment(), timeout=10)}
    c.close()
    assert sum(o for o in committed.values() if o > 0) >= 2000

    weir.kill9()
    weir.start()
    read = read_all(weir.bootstrap, topic, 4, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)
    assert {p: len(v) for p, v in read.items()} == {p: len(v) for p, v in acked.items()}
    # The group's offsets were kept in DynamoDB.
    c = consumer(weir.bootstrap, **{"group.id": "ddb-group"})
    from confluent_kafka import TopicPartition
    after = c.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    c.close()
    assert {tp.partition: tp.offset for tp in after} == committed
    # More writes after the restart continue the same logs.
    more, errors = produce_numbered(weir.bootstrap, topic, 4000, 400, 4)
    assert not errors
    for p in range(4):
        acked[p] += more[p]
    read = read_all(weir.bootstrap, topic, 4, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)


def test_metadata_writes_are_per_flush(weir_factory):
    admin_port = free_port()
    weir = weir_factory("--metadata", dynamodb_url(), "--flush-interval-ms", "100",
                        "--admin-listen", f"127.0.0.1:{admin_port}")
    topic = unique_topic("perflush")
    create_topic(weir.bootstrap, topic, partitions=8)
    before = metrics(admin_port)
    # Small batches (at most 10 records each), many of them.
    p = producer(weir.bootstrap, **{"linger.ms": 1, "batch.num.messages": 10})
    count = 20000
    started = time.monotonic()
    for i in range(count):
        while True:
            try:
                p.produce(topic, value=b"v" * 200, partition=i % 8)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    flush_all(p)
    elapsed = time.monotonic() - started
    after = metrics(admin_port)
    delta = {op: after.get(op, 0) - before.get(op, 0) for op in after}
    writes = sum(delta.get(op, 0) for op in
                 ("TransactWriteItems", "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"))
    batches = count // 10
    print(f"\nmetadata writes: {writes:.0f} in {elapsed:.1f}s ({writes / elapsed:.1f}/s) for "
          f"{count} records ({count / elapsed:.0f}/s) in >= {batches} batches; {delta}")
    # At most one transaction per flush (flushes are at least 100 ms apart, or 4 MiB),
    # so far fewer writes than batches.
    assert delta.get("TransactWriteItems", 0) >= 1
    assert writes <= elapsed * 10 * 1.5 + 10, delta
    assert writes < batches / 5, delta


def test_gateway_over_quic_metadata_service(weir_factory, metadata_service):
    svc = metadata_service()
    assert "?ca=" in svc.url
    weir = weir_factory("--metadata", svc.url)
    topic = unique_topic("quic")
    create_topic(weir.bootstrap, topic, partitions=3)
    acked, errors = produce_numbered(weir.bootstrap, topic, 0, 3000, 3)
    assert not errors
    read = read_all(weir.bootstrap, topic, 3, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)

    # The gateway restarts; the metadata lives on in the service.
    weir.restart()
    read = read_all(weir.bootstrap, topic, 3, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)

    # kill -9 the metadata service while producing; bring it back after two seconds.
    # Producers see only retriable errors (their retries carry the records over the outage).
    import threading
    result = {}

    def produce_through_outage():
        result["acked"], result["errors"] = produce_numbered(
            weir.bootstrap, topic, 3000, 3000, 3, **{"message.timeout.ms": 60000})

    t = threading.Thread(target=produce_through_outage)
    t.start()
    time.sleep(0.3)
    svc.kill9()
    time.sleep(2)
    svc.start()
    t.join(timeout=180)
    assert not t.is_alive()
    assert not result["errors"], result["errors"][:3]
    for p, values in result["acked"].items():
        acked.setdefault(p, []).extend(values)
    assert sum(len(v) for v in acked.values()) == 6000
    read = read_all(weir.bootstrap, topic, 3, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)
    assert {p: len(v) for p, v in read.items()} == {p: len(v) for p, v in acked.items()}


def test_metadata_service_serves_dynamodb(weir_factory, metadata_service):
    svc = metadata_service(backend=dynamodb_url())
    weir = weir_factory("--metadata", svc.url)
    topic = unique_topic("quicddb")
    create_topic(weir.bootstrap, topic, partitions=2)
    acked, errors = produce_numbered(weir.bootstrap, topic, 0, 1000, 2)
    assert not errors
    read = read_all(weir.bootstrap, topic, 2, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)


def test_unreachable_metadata_is_a_clear_error(tmp_path):
    """weir serve with a metadata service that is not there exits with a message."""
    ca = tmp_path / "ca.pem"
    subprocess.run([str(weir_bin()), "tls", "generate", "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    r = subprocess.run(
        [str(weir_bin()), "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(tmp_path / "d"), "--admin-listen", f"127.0.0.1:{free_port()}",
         "--metadata", f"quic://127.0.0.1:{free_port()}?ca={ca}"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "metadata" in r.stderr.lower()


def test_metadata_service_refuses_unauthenticated_remote_listen(tmp_path):
    r = subprocess.run([str(weir_bin()), "metadata", "--listen", f"0.0.0.0:{free_port()}",
                        "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "--allow-remote" in r.stderr
