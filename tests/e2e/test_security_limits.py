"""Connection limits, SASL re-authentication (KIP-368) and operator-supplied TLS certificates."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time

from confluent_kafka import Consumer, Producer

from conftest import free_port, weir_bin
from helpers import RDKAFKA_LOG, unique_topic

ALLOW_ALL = {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "kafka-cluster:*", "Resource": "*"}]}


def api_versions_frame(correlation: int) -> bytes:
    # ApiVersions v0: header (key 18, version 0, correlation id, client id "t"), empty body.
    body = struct.pack(">hhih", 18, 0, correlation, 1) + b"t"
    return struct.pack(">i", len(body)) + body


def answered(sock: socket.socket, correlation: int) -> bool:
    """Sends ApiVersions; True if an answer with our correlation id comes back."""
    try:
        sock.sendall(api_versions_frame(correlation))
        head = sock.recv(8)
    except OSError:
        return False
    return len(head) == 8 and struct.unpack(">i", head[4:8])[0] == correlation


def weir_auth(admin: str, *args: str, stdin: str | None = None) -> object:
    out = subprocess.run([str(weir_bin()), "auth", "--admin", admin, *args], input=stdin,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_connection_cap_refuses_extra_connections_and_recovers(weir_factory):
    server = weir_factory("--max-connections", "3")
    socks = []
    try:
        for i in range(3):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            socks.append(s)
            assert answered(s, i), "a connection within the cap must be served"
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        socks.append(extra)
        assert not answered(extra, 99), "the fourth connection must be closed"
        # Closing one makes room again.
        socks[0].close()
        time.sleep(0.3)
        again = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        socks.append(again)
        assert answered(again, 100)
        assert server.alive()
    finally:
        for s in socks:
            s.close()


def test_scram_sessions_reauthenticate_without_dropping_traffic(weir_factory):
    sasl_port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    server = weir_factory("--listener", f"SASL_SSL://127.0.0.1:{sasl_port}?mechanisms=SCRAM-SHA-512",
                          "--admin-listen", f"127.0.0.1:{admin_port}",
                          "--session-lifetime-ms", "2000", "--auto-create-topics")
    weir_auth(admin, "scram", "set", "poller", "--password-stdin", stdin="pw-123\n")
    policy = server.base_dir / "all.json"
    policy.write_text(json.dumps(ALLOW_ALL))
    weir_auth(admin, "policy", "put", "poller", "all", "--file", str(policy))
    conf = {"bootstrap.servers": f"127.0.0.1:{sasl_port}", "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(server.data_dir / "tls" / "ca.pem"),
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "poller",
            "sasl.password": "pw-123", "logger": RDKAFKA_LOG}
    topic = unique_topic("reauth")
    producer = Producer(conf)
    errors, sent = [], 0
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        producer.produce(topic, b"v%d" % sent,
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
        sent += 1
        producer.poll(0.02)
    assert producer.flush(20) == 0
    assert errors == []
    consumer = Consumer(dict(conf, **{"group.id": unique_topic("g"), "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    got = 0
    end = time.monotonic() + 30
    while got < sent and time.monotonic() < end:
        m = consumer.poll(1)
        if m is not None and m.error() is None:
            got += 1
    consumer.close()
    assert got == sent
    log = server.log_path.read_text()
    # Sessions of 2 s over about 7 s of producing: the client re-authenticated on its
    # connections rather than failing.
    assert log.count("authenticated conn=") >= 4, server.log_tail()
    assert "session expired" not in log


def test_operator_certificates_on_an_ssl_listener(weir_factory, tmp_path):
    out = subprocess.run([str(weir_bin()), "tls", "generate", "--out", str(tmp_path / "tls"),
                          "--host", "localhost", "--host", "127.0.0.1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)
    ssl_port = free_port()
    weir_factory("--listener", f"SSL://127.0.0.1:{ssl_port}", "--tls-cert", files["cert"],
                 "--tls-key", files["key"], "--auto-create-topics")
    conf = {"bootstrap.servers": f"127.0.0.1:{ssl_port}", "security.protocol": "SSL",
            "ssl.ca.location": files["ca"], "logger": RDKAFKA_LOG}
    topic = unique_topic("ssl")
    p = Producer(conf)
    for i in range(20):
        p.produce(topic, b"r%d" % i)
    assert p.flush(20) == 0
    # A client that does not trust the CA cannot connect.
    other = subprocess.run([str(weir_bin()), "tls", "generate", "--out", str(tmp_path / "other")],
                           capture_output=True, text=True, timeout=30)
    untrusted = Producer(dict(conf, **{"ssl.ca.location": json.loads(other.stdout)["ca"],
                                       "message.timeout.ms": 3000}))
    failures = []
    untrusted.produce(topic, b"x", on_delivery=lambda err, msg: failures.append(err))
    untrusted.flush(10)
    assert len(failures) == 1 and failures[0] is not None, failures
