"""Malformed and hostile input on raw TCP sockets. After each case the server must still be
running and serve a real client; a bad request gets a closed connection or an error
response, never a hang."""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest

import kproto
from helpers import consume_partitions, create_topic, produce_values, unique_topic, watermarks

IO_TIMEOUT = 10.0


def assert_healthy(server):
    """The process is alive and a confluent-kafka produce + consume round trip works."""
    time.sleep(0.2)  # give a crash a moment to happen
    assert server.alive(), f"weir died (exit code {server.proc.returncode})\n{server.log_tail()}"
    t = unique_topic("health")
    create_topic(server.bootstrap, t, partitions=1)
    values = [b"still alive %d" % i for i in range(3)]
    assert produce_values(server.bootstrap, t, values) == [0, 1, 2]
    got = consume_partitions(server.bootstrap, t, [0], expected={0: 3}, timeout=30)[0]
    assert [m.value() for m in got] == values
    assert server.alive()


def connect(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=IO_TIMEOUT)
    s.settimeout(IO_TIMEOUT)
    return s


def outcome(s: socket.socket, corr_id: int | None = None) -> str:
    """Wait (bounded) for the server's reaction: 'closed' or 'response'.

    A response must be a well-formed frame and, if `corr_id` is given, carry it.
    A timeout (the server neither answered nor closed) fails the test.
    """
    try:
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                return "closed"
            head += chunk
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    except socket.timeout:
        pytest.fail(f"server neither answered nor closed the connection within {IO_TIMEOUT}s")
    (n,) = struct.unpack(">i", head)
    assert 4 <= n <= 16 * 1024 * 1024, f"bad response length {n}"
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        assert chunk, "connection closed in the middle of a response"
        body += chunk
    if corr_id is not None:
        assert struct.unpack(">i", body[:4])[0] == corr_id, "wrong correlation id"
    return "response"


def send_expect_close(server, data: bytes):
    with connect(server) as s:
        try:
            s.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return  # closed while we were still sending: fine
        assert outcome(s) == "closed", "expected the server to close the connection"


# -- framing ------------------------------------------------------------------------------------
def test_garbage_bytes(weir):
    send_expect_close(weir, b"\xde\xad\xbe\xef" * 64)  # negative length prefix
    assert_healthy(weir)


def test_http_request_on_kafka_port(weir):
    # "GET " read as a length prefix is 1.2 GB: over any sane request limit
    send_expect_close(weir, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert_healthy(weir)


def test_oversized_length_prefix(weir):
    send_expect_close(weir, struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 16)
    assert_healthy(weir)


def test_length_over_max_request_bytes(weir_factory):
    server = weir_factory("--max-request-bytes", "1048576")
    send_expect_close(server, struct.pack(">i", 2 * 1048576) + b"\x00\x03\x00\x01")
    assert_healthy(server)


def test_two_byte_frame(weir):
    with connect(weir) as s:
        s.sendall(struct.pack(">i", 2) + b"\x00\x12")
        outcome(s)  # closed or an error response, but never a hang
    assert_healthy(weir)


def test_zero_length_frame(weir):
    with connect(weir) as s:
        s.sendall(struct.pack(">i", 0))
        outcome(s)
    assert_healthy(weir)


def test_truncated_frame_then_close(weir):
    with connect(weir) as s:
        s.sendall(struct.pack(">i", 100) + b"\x00\x03\x00\x01" + b"\x00" * 6)
    assert_healthy(weir)


def test_truncated_frame_kept_open(weir):
    """A client that stalls mid-frame must not block other clients."""
    s = connect(weir)
    try:
        s.sendall(struct.pack(">i", 100) + b"\x00\x03\x00\x01")
        assert_healthy(weir)
    finally:
        s.close()


# -- headers and bodies ---------------------------------------------------------------------------
def test_unknown_api_key(weir):
    with connect(weir) as s:
        s.sendall(kproto.frame(kproto.i16(9999) + kproto.i16(0) + kproto.i32(77) + kproto.i16(-1)))
        outcome(s, corr_id=77)
    assert_healthy(weir)


def test_unknown_api_version(weir):
    with connect(weir) as s:
        s.sendall(kproto.frame(kproto.header_v1(kproto.METADATA, 999, 78) + kproto.i32(0)))
        outcome(s, corr_id=78)
    assert_healthy(weir)


def test_alter_configs_huge_array_count(weir):
    # i32 len, i16 key 33, i16 ver 0, i32 corr id, i16 client id -1, i32 0x26002600
    body = kproto.i16(33) + kproto.i16(0) + kproto.i32(5) + kproto.i16(-1) + kproto.i32(0x26002600)
    assert len(body) == 14
    with connect(weir) as s:
        s.sendall(kproto.frame(body))
        outcome(s, corr_id=5)
    assert_healthy(weir)


def test_string_longer_than_frame(weir):
    # CreateTopics v0 naming one topic whose name claims 30000 bytes, of which 5 follow
    body = (kproto.header_v1(kproto.CREATE_TOPICS, 0, 6) + kproto.i32(1)
            + kproto.i16(30000) + b"short")
    with connect(weir) as s:
        s.sendall(kproto.frame(body))
        outcome(s, corr_id=6)
    assert_healthy(weir)


def test_negative_array_count(weir):
    # Produce v3 with a topic array count of -7
    body = (kproto.header_v1(kproto.PRODUCE, 3, 9) + kproto.string(None) + kproto.i16(-1)
            + kproto.i32(1000) + kproto.i32(-7))
    with connect(weir) as s:
        s.sendall(kproto.frame(body))
        outcome(s, corr_id=9)
    assert_healthy(weir)


def test_random_bodies_for_every_api(weir):
    """A bounded, deterministic fuzz: valid headers for each API key at versions 0-12 with
    random bodies, each on its own connection."""
    rnd = random.Random(20240601)
    keys = [0, 1, 2, 3, 18, 19, 20, 21, 22, 32, 33, 37, 44, 60]
    deadline = time.monotonic() + 120
    for i in range(300):
        if time.monotonic() > deadline:
            break
        key = keys[i % len(keys)]
        version = rnd.randint(0, 12)
        body = rnd.randbytes(rnd.choice([0, 1, 3, 8, 20, 64, 300]))
        flexible = rnd.random() < 0.5
        hdr = (kproto.header_v2 if flexible else kproto.header_v1)(key, version, 1000 + i)
        with connect(weir) as s:
            try:
                s.sendall(kproto.frame(hdr + body))
            except (ConnectionResetError, BrokenPipeError):
                continue
            # A random Produce may say acks=0 (no response) and a random Fetch may ask
            # for a long poll: for those only the server's survival is checked.
            if key not in (kproto.PRODUCE, kproto.FETCH):
                try:
                    outcome(s)
                except OSError:
                    pass
        assert weir.alive(), f"weir died on key {key} v{version} body {body.hex()}\n" \
                             f"{weir.log_tail()}"
    assert_healthy(weir)


def test_many_idle_connections(weir):
    socks = []
    try:
        for _ in range(200):
            socks.append(connect(weir))
        assert_healthy(weir)
    finally:
        for s in socks:
            s.close()
    assert_healthy(weir)


# -- ApiVersions ------------------------------------------------------------------------------------
REQUIRED_APIS = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 18: "ApiVersions",
                 19: "CreateTopics", 20: "DeleteTopics", 21: "DeleteRecords",
                 22: "InitProducerId", 32: "DescribeConfigs", 33: "AlterConfigs",
                 37: "CreatePartitions", 44: "IncrementalAlterConfigs", 60: "DescribeCluster"}


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_api_versions_every_version(weir, version):
    with kproto.Conn(weir.port) as c:
        err, keys = kproto.api_versions(c, version)
    assert err == 0
    missing = {k: n for k, n in REQUIRED_APIS.items() if k not in keys}
    assert not missing, f"ApiVersions v{version} does not list {missing}"
    for k, (lo, hi) in keys.items():
        assert 0 <= lo <= hi, f"api {k}: min {lo} max {hi}"
    assert keys[18][1] >= 3


def test_api_versions_unsupported_version(weir):
    """An ApiVersions version the broker does not know: error 35 in the v0 layout with the
    key list, so that clients can retry lower."""
    with kproto.Conn(weir.port) as c:
        err, keys = kproto.api_versions(c, 99)
        assert err == kproto.UNSUPPORTED_VERSION
        assert 18 in keys and keys[18][0] == 0
        # the same connection keeps working
        err, keys = kproto.api_versions(c, 3)
        assert err == 0 and 0 in keys
    assert_healthy(weir)


# -- record batches -----------------------------------------------------------------------------
def test_produce_with_corrupted_crc(weir):
    t = unique_topic("crc")
    create_topic(weir.bootstrap, t, partitions=1)
    good = kproto.record_batch([b"good record"])
    with kproto.Conn(weir.port) as c:
        (r,) = kproto.produce_v3(c, t, 0, good)
        assert (r.error_code, r.base_offset) == (0, 0), r  # the hand-made request is valid

        bad = bytearray(kproto.record_batch([b"this record will be corrupted"]))
        bad[-3] ^= 0xFF  # flip bits in the record payload, covered by the CRC-32C
        (r,) = kproto.produce_v3(c, t, 0, bytes(bad))
        assert r.error_code == kproto.CORRUPT_MESSAGE, r

        bad_crc = bytearray(good)
        bad_crc[17:21] = b"\x00\x00\x00\x00"  # the CRC field itself
        (r,) = kproto.produce_v3(c, t, 0, bytes(bad_crc))
        assert r.error_code == kproto.CORRUPT_MESSAGE, r

        truncated = good[:-5]
        (r,) = kproto.produce_v3(c, t, 0, truncated)
        assert r.error_code in (kproto.CORRUPT_MESSAGE, kproto.INVALID_RECORD), r
    assert watermarks(weir.bootstrap, t, 0) == (0, 1)
    got = consume_partitions(weir.bootstrap, t, [0], expected={0: 1})[0]
    assert [m.value() for m in got] == [b"good record"]
    assert_healthy(weir)
