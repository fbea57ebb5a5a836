"""Storage nodes in their own processes: `weir storage` + `weir serve --storage quic://...`.

- The gateway produces and consumes through a storage node over QUIC, and a restarted
  gateway reads everything back from it.
- Two storage nodes sharing one object store: partitions spread over both (each node writes
  objects), every record is read back; after a kill -9 of one node, its partitions fail over
  to the other with only retriable errors, and everything stays readable.
- kill -9 of the storage node under load with idempotent producers: they see only retriable
  errors, and after the restart every acknowledged record is readable exactly once, in order.
- A gateway started before its storage node answers with retriable errors and recovers when
  the node comes up.
- `weir storage` refuses a metadata store it cannot share with gateways.

The metadata store is a `weir metadata` service (or DynamoDB with WEIR_E2E_METADATA=dynamodb),
and the nodes' object store is local disk (or S3 with WEIR_E2E_OBJECT_STORE=s3).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import urllib.request

from conftest import dynamodb_url, free_port, s3_url, weir_bin
from confluent_kafka import KafkaError

from helpers import (
    assert_exactly_once,
    consume_partitions,
    create_topic,
    produce_numbered,
    read_all,
    unique_topic,
)


def shared_metadata(weir_service) -> str:
    if os.environ.get("WEIR_E2E_METADATA") == "dynamodb":
        return dynamodb_url()
    return weir_service("metadata").url


def node_args(metadata: str, *extra) -> list[str]:
    args = ["--metadata", metadata, *extra]
    if os.environ.get("WEIR_E2E_OBJECT_STORE") == "s3":
        args += ["--object-store", s3_url()]
    return args


def puts(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    m = re.search(r'^weir_storage_object_requests_total\{op="put"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_gateway_over_a_storage_node(weir_factory, weir_service):
    meta = shared_metadata(weir_service)
    node = weir_service("storage", *node_args(meta))
    assert "?ca=" in node.url
    weir = weir_factory("--metadata", meta, "--storage", node.url)
    topic = unique_topic("node")
    create_topic(weir.bootstrap, topic, partitions=3)
    acked, errors = produce_numbered(weir.bootstrap, topic, 0, 3000, 3)
    assert not errors, errors[:3]
    assert sum(len(v) for v in acked.values()) == 3000
    read = read_all(weir.bootstrap, topic, 3, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)

    # A new gateway process reads it all back through the node (the objects are the node's).
    weir.restart()
    read = read_all(weir.bootstrap, topic, 3, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)
    assert {p: len(v) for p, v in read.items()} == {p: len(v) for p, v in acked.items()}

    # The node stops cleanly on SIGTERM.
    node.stop()


def test_two_storage_nodes_share_partitions_and_fail_over(weir_factory, weir_service, tmp_path):
    meta = shared_metadata(weir_service)
    # Both nodes present certificates of one CA, so one ?ca= serves the gateway, and they
    # share one object store (as nodes must: any node can then serve any object).
    tls = tmp_path / "tls"
    subprocess.run([str(weir_bin()), "tls", "generate", "--out", str(tls)], check=True,
                   capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    shared = (s3_url() if os.environ.get("WEIR_E2E_OBJECT_STORE") == "s3"
              else f"file://{tmp_path / 'objects'}")
    certs = ["--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server.key"),
             "--object-store", shared]
    ports = [free_port(), free_port()]
    nodes = [weir_service("storage", "--metadata", meta, *certs, "--metrics-listen",
                          f"127.0.0.1:{port}")
             for port in ports]
    url = (f"quic://127.0.0.1:{nodes[0].port},127.0.0.1:{nodes[1].port}"
           f"?ca={tls / 'ca.pem'}")
    weir = weir_factory("--metadata", meta, "--storage", url)
    topic = unique_topic("nodes")
    # 16 partitions: the chance that all hash to one of two nodes is 2 in 65,536.
    create_topic(weir.bootstrap, topic, partitions=16)
    acked, errors = produce_numbered(weir.bootstrap, topic, 0, 4000, 16)
    assert not errors, errors[:3]
    read = read_all(weir.bootstrap, topic, 16, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)
    assert sum(len(v) for v in read.values()) == 4000
    per_node = [puts(port) for port in ports]
    assert all(n > 0 for n in per_node), f"object PUTs per node: {per_node}"

    # kill -9 one node under load and leave it dead: its partitions fail over to the other
    # node; producers see only retriable errors, and everything is readable through the
    # survivor (old objects included, from the shared store).
    result = {}

    def produce_through_failover():
        result["acked"], result["errors"] = produce_numbered(
            weir.bootstrap, topic, 4000, 6000, 16, **{"message.timeout.ms": 90000})

    t = threading.Thread(target=produce_through_failover)
    t.start()
    time.sleep(0.5)
    nodes[0].kill9()
    t.join(timeout=240)
    assert not t.is_alive()
    assert not result["errors"], result["errors"][:3]
    for p, values in result["acked"].items():
        acked.setdefault(p, []).extend(values)
    assert sum(len(v) for v in acked.values()) == 10000
    read = read_all(weir.bootstrap, topic, 16, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)
    assert {p: len(v) for p, v in read.items()} == {p: len(v) for p, v in acked.items()}


def test_kill9_storage_node_under_load(weir_factory, weir_service):
    meta = shared_metadata(weir_service)
    node = weir_service("storage", *node_args(meta))
    weir = weir_factory("--metadata", meta, "--storage", node.url)
    topic = unique_topic("nodekill")
    create_topic(weir.bootstrap, topic, partitions=3)
    acked, errors = produce_numbered(weir.bootstrap, topic, 0, 2000, 3)
    assert not errors, errors[:3]

    result = {}

    def produce_through_outage():
        result["acked"], result["errors"] = produce_numbered(
            weir.bootstrap, topic, 2000, 6000, 3, **{"message.timeout.ms": 90000})

    t = threading.Thread(target=produce_through_outage)
    t.start()
    time.sleep(0.5)
    node.kill9()
    time.sleep(2)
    node.start()  # same port, same data dir
    t.join(timeout=240)
    assert not t.is_alive()
    # Retriable errors only: the producer's retries carried every record over the outage.
    assert not result["errors"], result["errors"][:3]
    for p, values in result["acked"].items():
        acked.setdefault(p, []).extend(values)
    assert sum(len(v) for v in acked.values()) == 8000
    read = read_all(weir.bootstrap, topic, 3, {p: len(v) for p, v in acked.items()})
    assert_exactly_once(acked, read)
    assert {p: len(v) for p, v in read.items()} == {p: len(v) for p, v in acked.items()}
    assert weir.alive()


def test_gateway_waits_for_a_late_storage_node(weir_factory, weir_service, tmp_path):
    meta = shared_metadata(weir_service)
    tls = tmp_path / "tls"
    subprocess.run([str(weir_bin()), "tls", "generate", "--out", str(tls)], check=True,
                   capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    node = weir_service("storage", *node_args(meta, "--tls-cert", str(tls / "server.pem"),
                                              "--tls-key", str(tls / "server.key")),
                        start=False)
    weir = weir_factory("--metadata", meta, "--storage",
                        f"quic://127.0.0.1:{node.port}?ca={tls / 'ca.pem'}")
    topic = unique_topic("late")
    create_topic(weir.bootstrap, topic, partitions=1)
    # No node yet: records cannot be acknowledged; the producer gives up after its timeout
    # with a timeout error, and the gateway stays up.
    acked, errors = produce_numbered(weir.bootstrap, topic, 0, 10, 1,
                                     **{"message.timeout.ms": 3000})
    assert not acked and len(errors) == 10, (acked, errors[:3])
    assert all(e.code() == KafkaError._MSG_TIMED_OUT for e in errors), errors[:3]
    assert weir.alive()
    node.start()
    acked, errors = produce_numbered(weir.bootstrap, topic, 10, 500, 1)
    assert not errors, errors[:3]
    assert acked[0] == list(range(10, 510))
    got = consume_partitions(weir.bootstrap, topic, [0], expected={0: 500}, timeout=60)
    values = [int(m.value()) for m in got[0]]
    # A timed-out record's outcome is unknown to its producer (Kafka's "possibly persisted"):
    # a retry still queued in the gateway may land once the node is up. Such a record is
    # there at most once and before the later ones; every acknowledged one is there, once.
    early = [v for v in values if v < 10]
    assert early == sorted(set(early)), values[:20]
    assert values[len(early):] == list(range(10, 510))


def test_storage_node_refuses_an_unshared_metadata_store(tmp_path):
    out = subprocess.run(
        [str(weir_bin()), "storage", "--listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(tmp_path), "--metadata", f"embedded://{tmp_path}/m"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert "shared with the gateways" in out.stderr


def test_orphan_sweep_spares_objects_a_node_may_be_committing(weir_factory, weir_service,
                                                                 tmp_path):
    """At start, a gateway deletes objects nothing refers to: all of them when its storage is
    in-process (nothing else writes), only those older than 15 minutes when storage nodes may
    be between writing an object and committing it."""
    now_ms = int(time.time() * 1000)

    def plant(objects_dir, *ages_ms):
        data = objects_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        paths = []
        for age in ages_ms:
            path = data / f"{now_ms - age:013d}-{os.urandom(16).hex()}.wseg"
            path.write_bytes(b"not an object anyone committed")
            paths.append(path)
        return paths

    # In-process storage: every orphan goes.
    objects = tmp_path / "inproc"
    old, young = plant(objects, 3_600_000, 1_000)
    weir_factory("--object-store", f"file://{objects}", "--metadata",
                 f"embedded://{tmp_path}/m1")
    assert not old.exists() and not young.exists()

    # Storage nodes: the young orphan stays.
    if os.environ.get("WEIR_E2E_OBJECT_STORE") == "s3":
        return  # planted as files; the S3 pass covers the node path above
    meta = shared_metadata(weir_service)
    objects = tmp_path / "nodes"
    old, young = plant(objects, 3_600_000, 60_000)
    node = weir_service("storage", "--metadata", meta, "--object-store", f"file://{objects}")
    weir_factory("--metadata", meta, "--storage", node.url)
    assert not old.exists(), "an hour-old orphan was kept"
    assert young.exists(), "a minute-old unreferenced object was deleted"
