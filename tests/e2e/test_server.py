"""The `weir serve` command line: auto-created topics, default partitions, log format,
signals, and a busy port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from confluent_kafka.admin import NewTopic

from conftest import weir_bin
from helpers import (admin, consume_partitions, create_topic, produce_values, producer,
                     unique_topic, wait_for_topic, watermarks)


def test_auto_create_topics_with_default_partitions(weir_factory):
    server = weir_factory("--auto-create-topics", "--default-partitions", "3")
    b = server.bootstrap
    t = unique_topic("auto")
    errors = []
    p = producer(b, message_timeout_ms=30000)
    p.produce(t, b"auto-created", partition=2, on_delivery=lambda e, m: errors.append(e))
    p.flush(30)
    assert errors == [None], errors
    wait_for_topic(b, t, 3)
    assert watermarks(b, t, 2) == (0, 1)
    got = consume_partitions(b, t, [2], expected={2: 1})[2]
    assert [m.value() for m in got] == [b"auto-created"]


def test_create_topics_with_default_partition_count(weir_factory):
    server = weir_factory("--default-partitions", "4")
    b = server.bootstrap
    t = unique_topic("dflt")
    fs = admin(b).create_topics([NewTopic(t)], operation_timeout=30, request_timeout=30)
    fs[t].result(timeout=30)
    wait_for_topic(b, t, 4)


def test_no_auto_create_by_default(weir):
    t = unique_topic("noauto")
    md = admin(weir.bootstrap).list_topics(topic=t, timeout=10)
    assert md.topics[t].error is not None  # UNKNOWN_TOPIC_OR_PART
    time.sleep(0.5)
    assert t not in admin(weir.bootstrap).list_topics(timeout=10).topics


def test_json_log_format(weir_factory):
    server = weir_factory("--log-format", "json")
    create_topic(server.bootstrap, unique_topic("json"), partitions=1)
    server.terminate()
    lines = [l for l in server.log_path.read_text().splitlines()
             if l.strip() and not l.startswith("=====") and "bootstrap.servers=" not in l]
    assert lines, "no log lines"
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}")


def test_sigint_exits_zero(weir):
    os.kill(weir.proc.pid, signal.SIGINT)
    assert weir.proc.wait(timeout=30) == 0, weir.log_tail()


def test_restart_keeps_port_and_topics(weir):
    b = weir.bootstrap
    t = unique_topic("restart")
    create_topic(b, t, partitions=2)
    produce_values(b, t, [b"one", b"two"], partition=1)
    for _ in range(3):
        weir.restart()  # graceful stop (exit 0 asserted) and start on the same port
    wait_for_topic(b, t, 2)
    assert watermarks(b, t, 1) == (0, 2)
    got = consume_partitions(b, t, [1], expected={1: 2})[1]
    assert [m.value() for m in got] == [b"one", b"two"]


def test_busy_port_fails_fast(weir, tmp_path):
    """A second server on a port in use exits non-zero instead of hanging."""
    proc = subprocess.run(
        [str(weir_bin()), "serve", "--listen", weir.bootstrap, "--data-dir", str(tmp_path)],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert b"bootstrap.servers=" not in proc.stdout
    assert weir.alive()
