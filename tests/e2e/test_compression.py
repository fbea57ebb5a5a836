"""Every compression codec round-trips byte-exact (confluent-kafka and kafka-python)."""

from __future__ import annotations

import random
import time

import pytest

from helpers import (DeliveryLog, consume_partitions, create_topic, flush_all, producer,
                     unique_topic, watermarks)

CODECS = ["gzip", "snappy", "lz4", "zstd"]


def payloads(seed: int, n: int = 3000) -> list[bytes]:
    """Compressible text, incompressible random bytes, empty values and a few large ones."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append((b"compressible line %d " % i) * (1 + i % 40))
        elif kind == 1:
            out.append(rnd.randbytes(rnd.randint(1, 2000)))
        elif kind == 2:
            out.append(b"" if i % 8 == 2 else bytes([i % 256]) * rnd.randint(1, 5000))
        else:
            out.append(rnd.randbytes(50_000) if i % 500 == 3 else b"%d" % i)
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_codec_round_trip(weir_module, codec):
    b = weir_module.bootstrap
    t = unique_topic(f"cc-{codec}")
    create_topic(b, t, partitions=2)
    values = payloads(seed=CODECS.index(codec))
    log = DeliveryLog()
    p = producer(b, compression_type=codec, linger_ms=20, on_delivery=log,
                 batch_num_messages=500)
    for i, v in enumerate(values):
        p.produce(t, key=b"%s-%05d" % (codec.encode(), i), value=v, partition=i % 2)
        p.poll(0)
    flush_all(p)
    assert not log.errors, log.errors[:3]

    half = len(values) // 2
    got = consume_partitions(b, t, [0, 1], expected={0: half, 1: half})
    for part in (0, 1):
        expected = values[part::2]
        msgs = got[part]
        assert len(msgs) == len(expected)
        assert [m.offset() for m in msgs] == list(range(len(expected)))
        for j, (m, v) in enumerate(zip(msgs, expected)):
            assert m.key() == b"%s-%05d" % (codec.encode(), 2 * j + part)
            assert (m.value() or b"") == v, f"{codec} partition {part} offset {j} differs"
        assert watermarks(b, t, part) == (0, len(expected))


def _kafka_python_has(codec: str) -> bool:
    import kafka.codec as kc
    return {"gzip": kc.has_gzip, "snappy": kc.has_snappy, "lz4": kc.has_lz4,
            "zstd": kc.has_zstd}[codec]()


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_codec_round_trip(weir_module, codec):
    if not _kafka_python_has(codec):
        pytest.skip(f"kafka-python has no {codec} library installed")
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KpTP

    b = weir_module.bootstrap
    t = unique_topic(f"kpc-{codec}")
    create_topic(b, t, partitions=1)
    values = payloads(seed=7 + len(codec), n=1000)
    prod = KafkaProducer(bootstrap_servers=b, compression_type=codec, linger_ms=20,
                         acks="all", request_timeout_ms=30000, max_request_size=4 * 1024 * 1024)
    try:
        futures = [prod.send(t, value=v, partition=0) for v in values]
        prod.flush(timeout=60)
        offsets = [f.get(timeout=30).offset for f in futures]
    finally:
        prod.close(timeout=10)
    assert offsets == list(range(len(values)))

    # read back with kafka-python (it decompresses itself) ...
    cons = KafkaConsumer(bootstrap_servers=b, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", request_timeout_ms=30000,
                         max_partition_fetch_bytes=8 * 1024 * 1024)
    got = []
    try:
        tp = KpTP(t, 0)
        cons.assign([tp])
        cons.seek_to_beginning(tp)
        deadline = time.monotonic() + 60
        while len(got) < len(values) and time.monotonic() < deadline:
            for msgs in cons.poll(timeout_ms=500).values():
                got.extend((m.offset, m.value) for m in msgs)
    finally:
        cons.close()
    assert [o for o, _ in got] == list(range(len(values)))
    assert [v or b"" for _, v in got] == values

    # ... and with librdkafka
    msgs = consume_partitions(b, t, [0], expected={0: len(values)})[0]
    assert [m.value() or b"" for m in msgs] == values
