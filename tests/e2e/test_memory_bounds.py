"""Memory stays bounded whatever clients announce: the gateway's request budget
(`--request-memory-bytes`) caps the request bytes held across all connections.

300 raw connections each announce a 100 MiB request frame and then trickle bytes into it as
fast as the server takes them. Without a shared budget each connection buffers what it
receives (gigabytes within seconds); with it, only frames that fit the budget are read, the
others' bytes wait in the kernel, and the server's RSS stays under baseline + budget. A real
client (confluent-kafka, idempotent) keeps producing meanwhile and every record is
acknowledged.

This is about the Kafka front end only, so it runs once, on the local backends."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import threading
import time

import pytest

from helpers import consume_partitions, create_topic, producer, unique_topic

pytestmark = pytest.mark.skipif(
    os.environ.get("WEIR_E2E_METADATA") == "dynamodb"
    or os.environ.get("WEIR_E2E_OBJECT_STORE") == "s3",
    reason="front-end memory bound: covered by the local pass",
)

MiB = 1 << 20
BUDGET = 160 * MiB
FRAME = 100 * MiB
CONNECTIONS = 300
TRICKLE_SECONDS = 12.0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_300_trickled_100mib_frames_stay_within_the_request_budget(weir_factory):
    server = weir_factory("--request-memory-bytes", str(BUDGET),
                          "--max-connections-per-second", "10000")
    topic = unique_topic("membound")
    create_topic(server.bootstrap, topic, partitions=2)
    # Warm up the produce path so the baseline includes its buffers.
    p = producer(server.bootstrap, **{"enable.idempotence": True, "linger.ms": 5})
    for i in range(2000):
        p.produce(topic, value=b"w" * 1000, partition=i % 2)
    assert p.flush(60) == 0
    baseline = rss_bytes(server.pid)

    socks = []
    for _ in range(CONNECTIONS):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        # The announced length, then the start of a header; the rest trickles.
        s.sendall(struct.pack(">i", FRAME) + struct.pack(">hhi", 0, 9, 1))
        s.setblocking(False)
        socks.append(s)

    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(server.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    acked = []
    errors = []

    def on_delivery(err, msg):
        (errors if err else acked).append(err or msg.offset())

    chunk = b"x" * (256 * 1024)
    sent = 0
    produced = 0
    deadline = time.monotonic() + TRICKLE_SECONDS
    open_socks = list(socks)
    try:
        while time.monotonic() < deadline:
            _, writable, _ = select.select([], open_socks, [], 0.05)
            for s in writable:
                try:
                    sent += s.send(chunk)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    open_socks.remove(s)  # closed by the server (frame timeout / garbage)
            # Other clients keep producing meanwhile.
            for _ in range(50):
                p.produce(topic, value=b"v%08d" % produced, partition=produced % 2,
                          on_delivery=on_delivery)
                produced += 1
            p.poll(0)
        assert p.flush(60) == 0, "the producer could not finish while frames were trickled"
    finally:
        stop.set()
        sampler.join()
        for s in socks:
            s.close()

    assert sent > 4 * BUDGET, (
        f"only {sent / MiB:.0f} MiB were offered: the test did not push the server past its budget")
    assert not errors, f"delivery errors under the trickle: {errors[:5]}"
    assert len(acked) == produced
    growth = peak[0] - baseline
    print(f"baseline RSS {baseline / MiB:.0f} MiB, peak {peak[0] / MiB:.0f} MiB, "
          f"growth {growth / MiB:.0f} MiB, offered {sent / MiB:.0f} MiB, "
          f"{produced} records acknowledged meanwhile")
    assert growth < BUDGET, (
        f"RSS grew by {growth / MiB:.0f} MiB (peak {peak[0] / MiB:.0f} MiB) with a "
        f"{BUDGET / MiB:.0f} MiB request budget")
    assert server.alive()

    # Everything acknowledged is readable, and the server still serves.
    got = consume_partitions(server.bootstrap, topic, [0, 1],
                             expected={0: (2000 + produced) // 2, 1: (2000 + produced) // 2},
                             timeout=60)
    assert sum(len(v) for v in got.values()) == 2000 + produced


def test_request_memory_smaller_than_the_largest_request_is_refused(weir_factory):
    server = weir_factory("--request-memory-bytes", str(MiB), "--max-request-bytes", str(2 * MiB),
                          start=False)
    out = subprocess.run(server.command(), capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode != 0
    assert "request-memory-bytes" in (out.stderr + out.stdout)
