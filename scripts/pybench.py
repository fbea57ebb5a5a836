"""The reference client of the performance targets: confluent-kafka (Python) producing 1 KiB
records with acks=all and linger 5 ms to 8 partitions. Prints MB/s at full speed and the
acknowledgement latency p50/p99 at 10k records/s. Usage: python scripts/pybench.py HOST:PORT"""

import sys
import time
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def main(bootstrap: str) -> None:
    topic = f"pybench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=8)]).values():
        f.result()
    conf = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
            "queue.buffering.max.kbytes": 1048576, "queue.buffering.max.messages": 1000000}
    value = b"x" * 1024

    p = Producer(conf)
    n = 300_000
    start = time.perf_counter()
    for _ in range(n):
        while True:
            try:
                p.produce(topic, value)
                break
            except BufferError:
                p.poll(0.005)
    p.flush(120)
    secs = time.perf_counter() - start
    print(f"confluent-kafka produce: {n / secs:.0f} records/s, {n * 1024 / secs / 1e6:.1f} MB/s")

    latencies = []

    def on_ack(sent):
        return lambda err, msg: latencies.append(time.perf_counter() - sent) if err is None else None

    rate, seconds = 10_000, 10
    start = time.perf_counter()
    for i in range(rate * seconds):
        due = start + i / rate
        while time.perf_counter() < due:
            p.poll(0)
        p.produce(topic, value, on_delivery=on_ack(time.perf_counter()))
    p.flush(60)
    latencies.sort()
    q = lambda x: latencies[int(x * (len(latencies) - 1))] * 1000
    print(f"confluent-kafka at {rate}/s: ack p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {latencies[-1] * 1000:.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092")
