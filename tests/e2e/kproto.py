"""Hand-encoded Kafka requests for the tests that need exact control over the bytes.

Only non-flexible request versions are encoded here (request header v1, response header v0),
except ApiVersions v3+, whose request header is v2 but whose response header stays v0.
Record batches are built with kafka-python's own record builder (magic 2, CRC-32C).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from kafka.record.memory_records import MemoryRecordsBuilder

# API keys
PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
API_VERSIONS = 18
CREATE_TOPICS = 19
INIT_PRODUCER_ID = 22
ALTER_CONFIGS = 33

# error codes
NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35
INVALID_RECORD = 87
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46


# -- primitive encoders ------------------------------------------------------------------
def i8(v): return struct.pack(">b", v)
def i16(v): return struct.pack(">h", v)
def i32(v): return struct.pack(">i", v)
def i64(v): return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def nbytes(b: bytes | None) -> bytes:
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def compact_string(s: str | None) -> bytes:
    if s is None:
        return uvarint(0)
    b = s.encode()
    return uvarint(len(b) + 1) + b


def array(items: list[bytes]) -> bytes:
    return i32(len(items)) + b"".join(items)


def frame(body: bytes) -> bytes:
    return i32(len(body)) + body


def header_v1(api_key: int, version: int, corr_id: int, client_id: str | None = "weir-e2e") -> bytes:
    return i16(api_key) + i16(version) + i32(corr_id) + string(client_id)


def header_v2(api_key: int, version: int, corr_id: int, client_id: str | None = "weir-e2e") -> bytes:
    return header_v1(api_key, version, corr_id, client_id) + uvarint(0)


# -- primitive decoder ---------------------------------------------------------------------
class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"short read: need {n} at {self.pos}, have {len(self.data)}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i8(self): return struct.unpack(">b", self.take(1))[0]
    def i16(self): return struct.unpack(">h", self.take(2))[0]
    def i32(self): return struct.unpack(">i", self.take(4))[0]
    def i64(self): return struct.unpack(">q", self.take(8))[0]

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            b = self.take(1)[0]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def string(self) -> str | None:
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def compact_string(self) -> str | None:
        n = self.uvarint()
        return None if n == 0 else self.take(n - 1).decode()

    def tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())

    def remaining(self) -> int:
        return len(self.data) - self.pos


# -- connection ----------------------------------------------------------------------------
class Conn:
    """A blocking socket speaking length-prefixed frames, every call bounded by `timeout`."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.corr = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_frame(self) -> bytes:
        (n,) = struct.unpack(">i", self.recv_exact(4))
        if n < 0 or n > 64 * 1024 * 1024:
            raise ValueError(f"bad response length {n}")
        return self.recv_exact(n)

    def request(self, api_key: int, version: int, body: bytes, flexible_header: bool = False,
                flexible_response: bool | None = None) -> Reader:
        """Send one request; return a Reader positioned after the response header.

        A flexible request gets a flexible response header (with tagged fields), except
        ApiVersions, whose response header is always v0.
        """
        if flexible_response is None:
            flexible_response = flexible_header and api_key != API_VERSIONS
        self.corr += 1
        hdr = (header_v2 if flexible_header else header_v1)(api_key, version, self.corr)
        self.send_raw(frame(hdr + body))
        r = Reader(self.recv_frame())
        corr = r.i32()
        assert corr == self.corr, f"correlation id {corr} != {self.corr}"
        if flexible_response:
            r.tagged_fields()
        return r


# -- record batches ------------------------------------------------------------------------
def record_batch(values: list[bytes], *, producer_id: int = -1, producer_epoch: int = -1,
                 base_sequence: int = -1, timestamp_ms: int = 1_700_000_000_000,
                 keys: list[bytes | None] | None = None) -> bytes:
    b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=16 * 1024 * 1024)
    if producer_id >= 0:
        b.set_producer_state(producer_id, producer_epoch, base_sequence, False)
    for i, v in enumerate(values):
        key = keys[i] if keys else None
        b.append(timestamp_ms + i, key, v, [])
    b.close()
    return bytes(b.buffer())


# -- requests --------------------------------------------------------------------------
@dataclass
class ProducePartitionResult:
    topic: str
    partition: int
    error_code: int
    base_offset: int


def produce_v3(conn: Conn, topic: str, partition: int, records: bytes, acks: int = -1,
               timeout_ms: int = 10000) -> list[ProducePartitionResult]:
    body = (string(None) + i16(acks) + i32(timeout_ms)
            + array([string(topic) + array([i32(partition) + nbytes(records)])]))
    r = conn.request(PRODUCE, 3, body)
    out = []
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            idx = r.i32()
            err = r.i16()
            base = r.i64()
            r.i64()  # log_append_time_ms
            out.append(ProducePartitionResult(name, idx, err, base))
    r.i32()  # throttle
    return out


def init_producer_id(conn: Conn, version: int = 4) -> tuple[int, int, int]:
    """InitProducerId without a transactional id; returns (error_code, producer_id, epoch).

    v4 by default, the version kafka-python and librdkafka send.
    """
    if version >= 2:
        body = compact_string(None) + i32(60000)
        if version >= 3:
            body += i64(-1) + i16(-1)  # producer_id, producer_epoch: none yet
        body += uvarint(0)
        r = conn.request(INIT_PRODUCER_ID, version, body, flexible_header=True)
    else:
        body = string(None) + i32(60000)
        r = conn.request(INIT_PRODUCER_ID, version, body)
    r.i32()  # throttle
    err = r.i16()
    pid = r.i64()
    epoch = r.i16()
    return err, pid, epoch


def api_versions(conn: Conn, version: int) -> tuple[int, dict[int, tuple[int, int]]]:
    """Send ApiVersions at `version`; returns (error_code, {api_key: (min, max)}).

    For an unsupported version a broker answers in the v0 layout, so the body is parsed
    as v0 whenever the error code is UNSUPPORTED_VERSION.
    """
    if version >= 3:
        body = compact_string("weir-e2e") + compact_string("1.0") + uvarint(0)
        r = conn.request(API_VERSIONS, version, body, flexible_header=True)
    else:
        r = conn.request(API_VERSIONS, version, b"")
    err = r.i16()
    keys = {}
    if version >= 3 and err != UNSUPPORTED_VERSION:
        n = r.uvarint() - 1
        for _ in range(n):
            k, lo, hi = r.i16(), r.i16(), r.i16()
            r.tagged_fields()
            keys[k] = (lo, hi)
        r.i32()  # throttle
        r.tagged_fields()
    else:
        for _ in range(r.i32()):
            k, lo, hi = r.i16(), r.i16(), r.i16()
            keys[k] = (lo, hi)
        if version >= 1 and err != UNSUPPORTED_VERSION:
            r.i32()  # throttle
    return err, keys


@dataclass
class FetchPartitionResult:
    topic: str
    partition: int
    error_code: int
    high_watermark: int
    log_start_offset: int
    records: bytes | None


def fetch_v5(conn: Conn, topic: str, partition: int, offset: int, *, max_wait_ms: int,
             min_bytes: int = 1, max_bytes: int = 1024 * 1024) -> list[FetchPartitionResult]:
    body = (i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0)
            + array([string(topic) + array([i32(partition) + i64(offset) + i64(-1)
                                            + i32(max_bytes)])]))
    r = conn.request(FETCH, 5, body)
    r.i32()  # throttle
    out = []
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            idx, err, hw = r.i32(), r.i16(), r.i64()
            r.i64()  # last stable offset
            lso = r.i64()
            n_aborted = r.i32()
            for _ in range(max(n_aborted, 0)):
                r.i64(), r.i64()
            n = r.i32()
            records = None if n < 0 else r.take(n)
            out.append(FetchPartitionResult(name, idx, err, hw, lso, records))
    return out


def batch_record_counts(records: bytes) -> list[tuple[int, int]]:
    """[(base_offset, record_count)] for each complete v2 batch in a fetched records blob."""
    out = []
    pos = 0
    while pos + 61 <= len(records):
        base = struct.unpack(">q", records[pos:pos + 8])[0]
        length = struct.unpack(">i", records[pos + 8:pos + 12])[0]
        if pos + 12 + length > len(records):
            break  # a partial batch at the end is allowed
        count = struct.unpack(">i", records[pos + 57:pos + 61])[0]
        out.append((base, count))
        pos += 12 + length
    return out
