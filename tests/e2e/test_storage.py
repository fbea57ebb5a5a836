"""The storage service's object requests, seen through /metrics.

- Cost invariant: producing the same bytes to 1, 100 and 1000 partitions makes about the same
  number of object PUTs (objects hold every partition that had data).
- The counters move: PUTs with bytes, cache hits for tail reads.

Runs against whatever object store the suite uses (local disk, or S3 with
WEIR_E2E_OBJECT_STORE=s3).
"""

from __future__ import annotations

import re
import time
import urllib.request

from conftest import free_port
from helpers import consume_partitions, create_topic, flush_all, producer, unique_topic


def scrape(admin_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"(weir_storage_\w+?)(\{[^}]*\})? (\S+)$", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


PUTS = 'weir_storage_object_requests_total{op="put"}'
PUT_BYTES = 'weir_storage_object_bytes_total{op="put"}'


def produce_bytes(bootstrap: str, topic: str, partitions: int, records: int, size: int,
                  seconds: float = 0) -> float:
    """Produces `records` of `size` bytes round-robin over the partitions, spread evenly over
    `seconds` (0: as fast as possible); returns the elapsed time."""
    p = producer(bootstrap, **{"linger.ms": 5})
    value = b"x" * size
    started = time.monotonic()
    for i in range(records):
        if seconds:
            due = started + seconds * i / records
            while time.monotonic() < due:
                p.poll(0.001)
        while True:
            try:
                p.produce(topic, value=value, partition=i % partitions)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    flush_all(p, timeout=120)
    return time.monotonic() - started


def test_puts_do_not_grow_with_partitions(weir_factory, tmp_path):
    admin = free_port()
    # Object PUTs are what this counts: the metadata stays embedded even in the AWS pass, so
    # that a slow DynamoDB emulation (a 1000-partition flush is 32 transactions on moto) does
    # not stretch the runs differently.
    weir = weir_factory("--admin-listen", f"127.0.0.1:{admin}", "--flush-interval-ms", "200",
                        "--metadata", f"embedded://{tmp_path}/metadata")
    records, size = 16000, 1024
    counts = {}
    for partitions in (1, 100, 1000):
        topic = unique_topic(f"cost{partitions}")
        create_topic(weir.bootstrap, topic, partitions=partitions)
        before = scrape(admin)
        # The same offered load for each: 16 MB over 8 seconds.
        elapsed = produce_bytes(weir.bootstrap, topic, partitions, records, size, seconds=8)
        after = scrape(admin)
        counts[partitions] = (after.get(PUTS, 0) - before.get(PUTS, 0),
                              after.get(PUT_BYTES, 0) - before.get(PUT_BYTES, 0), elapsed)
    print("\nobject PUTs for 16 MB: " + ", ".join(
        f"{p} partitions: {int(c[0])} PUTs, {c[1] / 1e6:.1f} MB in {c[2]:.1f}s"
        for p, c in counts.items()))
    puts = [c[0] for c in counts.values()]
    assert min(puts) >= 1
    # PUTs follow time and bytes, not partitions: at most one per 200 ms flush window (plus
    # one per 4 MiB), whatever the partition count; per partition it would be thousands.
    for p, (n, put_bytes, elapsed) in counts.items():
        assert n <= elapsed / 0.2 + put_bytes / (4 << 20) + 3, (p, counts)
    rates = [n / elapsed for n, _, elapsed in counts.values()]
    assert max(rates) <= 1.5 * min(rates), counts
    assert counts[1000][0] < 1000 / 10, counts
    for p, (_, put_bytes, _) in counts.items():
        assert put_bytes >= records * size, (p, put_bytes)


def test_tail_reads_hit_the_cache(weir_factory):
    admin = free_port()
    weir = weir_factory("--admin-listen", f"127.0.0.1:{admin}")
    topic = unique_topic("cachehit")
    create_topic(weir.bootstrap, topic, partitions=2)
    produce_bytes(weir.bootstrap, topic, 2, 2000, 200)
    before = scrape(admin)
    got = consume_partitions(weir.bootstrap, topic, [0, 1], expected={0: 1000, 1: 1000})
    assert sum(len(v) for v in got.values()) == 2000
    after = scrape(admin)
    hits = after.get('weir_storage_cache_requests_total{tier="memory",result="hit"}', 0) - \
        before.get('weir_storage_cache_requests_total{tier="memory",result="hit"}', 0)
    gets = after.get('weir_storage_object_requests_total{op="get"}', 0) - \
        before.get('weir_storage_object_requests_total{op="get"}', 0)
    # Freshly written objects are read from memory, not fetched again.
    assert hits >= 1
    assert gets == 0
    assert after.get("weir_storage_flush_bytes_count", 0) >= 1
