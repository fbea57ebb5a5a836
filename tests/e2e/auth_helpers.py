"""Shared pieces of the authentication tests (test_auth.py).

- `AuthServer`: a `weir serve` with `--listener` specs and an `--admin-listen` port.
- `WeirAuth`: runs `weir auth ...` against a server's admin API and parses its JSON.
- IAM tokens: the AWS MSK signer (aws-msk-iam-sasl-signer-python) with Weir-issued keys, and
  hand-made presigned tokens (past dates, tampered signatures) built the same way.
- confluent-kafka and kafka-python client configurations for SASL listeners, and produce /
  consume / "expect an authentication failure" helpers with bounded timeouts.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import botocore.auth
from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import CredentialProvider, Credentials
from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient

import kproto
from conftest import READY_TIMEOUT_S, WeirServer, free_port, weir_bin
from helpers import RDKAFKA_LOG

REGION = "us-east-1"  # the server's default --auth-region
CLUSTER_ARN = "arn:aws:kafka:*:*:cluster/*"
DEFAULT_MECHANISMS = {"OAUTHBEARER", "AWS_MSK_IAM", "SCRAM-SHA-256", "SCRAM-SHA-512"}
AUTH_FAILED = KafkaError._AUTHENTICATION
TOPIC_AUTHZ = KafkaError.TOPIC_AUTHORIZATION_FAILED      # 29
GROUP_AUTHZ = KafkaError.GROUP_AUTHORIZATION_FAILED      # 30
CLUSTER_AUTHZ = KafkaError.CLUSTER_AUTHORIZATION_FAILED  # 31


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- the server ------------------------------------------------------------------------------
@dataclass
class Listener:
    protocol: str  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    port: int
    mechanisms: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spec(self) -> str:
        s = f"{self.protocol}://{self.address}"
        if self.mechanisms:
            s += "?mechanisms=" + "+".join(self.mechanisms)
        return s


class AuthServer(WeirServer):
    """`weir serve` with `--listener`s and `--admin-listen`.

    With plaintext=True the conftest-style `--listen` address (self.bootstrap) is an extra
    PLAINTEXT listener; with plaintext=False only the `--listener`s are given.
    Readiness: the line starting `weir is ready:` and every port accepting connections.
    """

    def __init__(self, base_dir: Path, listeners: list[Listener], *, plaintext: bool = True,
                 extra_args=()):
        super().__init__(base_dir, extra_args)
        self.listeners = listeners
        self.plaintext = plaintext
        self.admin_port = free_port()

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ca_path(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    def listener(self, protocol: str, mechanisms: tuple[str, ...] = ()) -> Listener:
        for l in self.listeners:
            if l.protocol == protocol and tuple(l.mechanisms) == tuple(mechanisms):
                return l
        raise KeyError((protocol, mechanisms))

    def addr(self, protocol: str, mechanisms: tuple[str, ...] = ()) -> str:
        return self.listener(protocol, mechanisms).address

    def command(self) -> list[str]:
        cmd = [str(weir_bin()), "serve"]
        if self.plaintext:
            cmd += ["--listen", self.bootstrap]
        cmd += ["--data-dir", str(self.data_dir)]
        for l in self.listeners:
            cmd += ["--listener", l.spec()]
        cmd += ["--admin-listen", f"127.0.0.1:{self.admin_port}", *self.extra_args]
        return cmd

    def ports(self) -> list[int]:
        ports = [l.port for l in self.listeners] + [self.admin_port]
        return ports + ([self.port] if self.plaintext else [])

    def _wait_ready(self, offset: int) -> None:
        import pytest
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = False
        while time.monotonic() < deadline:
            if not ready:
                with open(self.log_path, "rb") as f:
                    f.seek(offset)
                    ready = any(line.startswith(b"weir is ready:")
                                for line in f.read().splitlines())
            if ready and all(_port_open(p) for p in self.ports()):
                return
            if self.proc.poll() is not None:
                pytest.fail(f"weir exited with code {self.proc.returncode} before it was "
                            f"ready.\n{self.log_tail()}", pytrace=False)
            time.sleep(0.05)
        self._force_kill()
        pytest.fail(f"weir not ready within {READY_TIMEOUT_S:.0f}s (ready line seen: {ready}, "
                    f"ports {self.ports()}).\n{self.log_tail()}", pytrace=False)

    def ready_line(self) -> str:
        lines = [l for l in self.log_path.read_text(errors="replace").splitlines()
                 if l.startswith("weir is ready:")]
        return lines[-1] if lines else ""


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ServerPool:
    """Starts AuthServers in temp dirs; `close()` stops them and removes the dirs."""

    def __init__(self, name: str):
        self.name = name
        self.servers: list[AuthServer] = []
        self.dirs: list[Path] = []

    def start(self, protocols: list[str | tuple[str, tuple[str, ...]]], *, plaintext=True,
              extra_args=()) -> AuthServer:
        base = Path(tempfile.mkdtemp(prefix=f"weir-e2e-auth-{self.name[:30]}-"))
        self.dirs.append(base)
        listeners = []
        for p in protocols:
            proto, mechs = (p, ()) if isinstance(p, str) else p
            listeners.append(Listener(proto, free_port(), tuple(mechs)))
        server = AuthServer(base, listeners, plaintext=plaintext, extra_args=extra_args)
        self.servers.append(server)
        server.start()
        return server

    def close(self, keep: bool = False) -> None:
        for s in self.servers:
            s.stop()
        for d in self.dirs:
            if keep or os.environ.get("WEIR_KEEP_DATA"):
                print(f"keeping weir data dir {d}")
            else:
                shutil.rmtree(d, ignore_errors=True)


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process `pid` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and f[9] in inodes:  # 0A = LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


# -- `weir auth` -----------------------------------------------------------------------------
class WeirAuthError(AssertionError):
    pass


class WeirAuth:
    """`weir auth ... --admin URL`: JSON on stdout, non-zero exit with stderr on error."""

    def __init__(self, admin_url: str, tmp_dir: Path | None = None):
        self.admin_url = admin_url
        self.tmp_dir = Path(tmp_dir or tempfile.mkdtemp(prefix="weir-e2e-policies-"))

    def run(self, *args: str, input_text: str | None = None,
            timeout: float = 20) -> subprocess.CompletedProcess:
        cmd = [str(weir_bin()), "auth", *args, "--admin", self.admin_url]
        env = {k: v for k, v in os.environ.items() if k != "WEIR_ADMIN_URL"}
        return subprocess.run(cmd, input=input_text, capture_output=True, text=True,
                              timeout=timeout, env=env)

    def ok(self, *args: str, input_text: str | None = None):
        p = self.run(*args, input_text=input_text)
        if p.returncode != 0:
            raise WeirAuthError(f"`weir auth {' '.join(args)}` exited {p.returncode}\n"
                                f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
        out = p.stdout.strip()
        if not out:
            return None
        try:
            return json.loads(out)
        except ValueError:
            raise WeirAuthError(f"`weir auth {' '.join(args)}` printed no JSON: {out[-2000:]!r}")

    def fails(self, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess:
        p = self.run(*args, input_text=input_text)
        assert p.returncode != 0, (f"`weir auth {' '.join(args)}` should have failed; it printed "
                                   f"{p.stdout[-2000:]!r}")
        assert p.stderr.strip(), f"`weir auth {' '.join(args)}` failed without a message"
        return p

    # keys
    def key_create(self, principal: str) -> dict:
        key = self.ok("key", "create", "--principal", principal)
        assert isinstance(key, dict), key
        assert key.get("principal") == principal, key
        assert key.get("access_key_id") and key.get("secret_access_key"), key
        return key

    def key_list(self, principal: str | None = None) -> list[dict]:
        args = ["key", "list"] + (["--principal", principal] if principal else [])
        keys = self.ok(*args)
        assert isinstance(keys, list), keys
        return keys

    def key_rotate(self, access_key_id: str) -> dict:
        return self.ok("key", "rotate", access_key_id)

    def key_revoke(self, access_key_id: str):
        return self.ok("key", "revoke", access_key_id)

    # scram
    def scram_set(self, user: str, password: str, mechanism: str | None = None,
                  stdin: bool = False):
        args = ["scram", "set", user]
        if stdin:
            args.append("--password-stdin")
        else:
            args += ["--password", password]
        if mechanism:
            args += ["--mechanism", mechanism]
        return self.ok(*args, input_text=(password + "\n") if stdin else None)

    def scram_list(self):
        return self.ok("scram", "list")

    def scram_delete(self, user: str):
        return self.ok("scram", "delete", user)

    # policies
    def policy_file(self, doc: dict) -> str:
        path = self.tmp_dir / f"policy-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(doc, indent=2))
        return str(path)

    def policy_put(self, principal: str, name: str, doc: dict):
        return self.ok("policy", "put", principal, name, "--file", self.policy_file(doc))

    def policy_list(self, principal: str):
        return self.ok("policy", "list", principal)

    def policy_listing(self, principal: str) -> str:
        """`policy list` output; empty when the command refuses a principal without policies."""
        p = self.run("policy", "list", principal)
        return p.stdout if p.returncode == 0 else ""

    def policy_delete(self, principal: str, name: str):
        return self.ok("policy", "delete", principal, name)


# -- IAM policies ----------------------------------------------------------------------------
def topic_arn(name_pattern: str) -> str:
    return f"arn:aws:kafka:*:*:topic/*/*/{name_pattern}"


def group_arn(name_pattern: str) -> str:
    return f"arn:aws:kafka:*:*:group/*/*/{name_pattern}"


def statement(effect: str, actions, resources) -> dict:
    return {"Effect": effect, "Action": actions, "Resource": resources}


def allow(actions, resources) -> dict:
    return statement("Allow", actions, resources)


def deny(actions, resources) -> dict:
    return statement("Deny", actions, resources)


def policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def producer_consumer_policy(topic_pattern: str, group_pattern: str = "*") -> dict:
    """What a producer + group consumer needs on matching topics (MSK's documented actions)."""
    return policy(
        allow(["kafka-cluster:Connect", "kafka-cluster:DescribeCluster",
               "kafka-cluster:WriteDataIdempotently"], CLUSTER_ARN),
        allow(["kafka-cluster:*Topic*", "kafka-cluster:WriteData", "kafka-cluster:ReadData"],
              topic_arn(topic_pattern)),
        allow(["kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"],
              group_arn(group_pattern)),
    )


# -- IAM tokens ------------------------------------------------------------------------------
class StaticCredentialProvider(CredentialProvider):
    METHOD = "weir-e2e-static"
    CANONICAL_NAME = "WeirE2EStatic"

    def __init__(self, access_key: str, secret_key: str):
        super().__init__()
        self._creds = Credentials(access_key, secret_key)

    def load(self):
        return self._creds


def signer_token(access_key: str, secret_key: str, region: str = REGION) -> tuple[str, int]:
    """The AWS MSK signer's own token: (base64url signed URL, expiry in ms)."""
    return MSKAuthTokenProvider.generate_auth_token_from_credentials_provider(
        region, StaticCredentialProvider(access_key, secret_key))


def presigned_token(access_key: str, secret_key: str, region: str = REGION,
                    signed_at: dt.datetime | None = None, expires: int = 900,
                    host_region: str | None = None) -> str:
    """The same token the MSK signer builds (see its __construct_auth_token), signed at
    `signed_at` (UTC) instead of now; `host_region` puts another region in the URL's host
    than the one in the credential scope."""
    when = (signed_at or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    when = when.replace(tzinfo=None)
    sig_v4 = SigV4QueryAuth(Credentials(access_key, secret_key), "kafka-cluster", region,
                            expires=expires)
    request = AWSRequest(method="GET", url=f"https://kafka.{host_region or region}.amazonaws.com/",
                         params={"Action": "kafka-cluster:Connect"})
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda *a, **k: when):
        sig_v4.add_auth(request)
    request.params = {"User-Agent": "aws-msk-iam-sasl-signer-python/1.0.2"}
    return encode_token(request.prepare().url)


def decode_token(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def encode_token(url: str) -> str:
    return base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def tamper_signature(token: str) -> str:
    """Flip one hex digit of X-Amz-Signature."""
    url = decode_token(token)
    marker = "X-Amz-Signature="
    i = url.index(marker) + len(marker) + 10
    flipped = "0" if url[i] != "0" else "1"
    tampered = url[:i] + flipped + url[i + 1:]
    assert tampered != url
    return encode_token(tampered)


# -- confluent-kafka configurations ----------------------------------------------------------
class ErrorLog:
    """error_cb that keeps every client-level error."""

    def __init__(self):
        self.errors: list[KafkaError] = []

    def __call__(self, err: KafkaError):
        self.errors.append(err)

    def codes(self) -> set[int]:
        return {e.code() for e in self.errors}

    def __repr__(self):
        return repr([(e.code(), e.name(), e.str()) for e in self.errors[:8]])


class OAuthTokens:
    """oauth_cb for confluent-kafka: `make()` returns a token string, or (token, expiry_s).

    Counts its calls, so a test can show the token was actually used.
    """

    def __init__(self, make):
        self.make = make
        self.calls = 0

    def __call__(self, oauth_config):
        self.calls += 1
        out = self.make()
        if isinstance(out, tuple):
            token, expiry_ms = out
            return token, expiry_ms / 1000.0
        # librdkafka refuses a token whose stated lifetime is over; the server must judge the
        # signed date itself, so the client is told the token is good for 10 more minutes.
        return out, time.time() + 600


def signer_oauth(key: dict, region: str = REGION) -> OAuthTokens:
    return OAuthTokens(lambda: signer_token(key["access_key_id"], key["secret_access_key"], region))


def base_conf(bootstrap: str, protocol: str, ca: str | None, errors: ErrorLog | None) -> dict:
    conf = {
        "bootstrap.servers": bootstrap,
        "security.protocol": protocol,
        "logger": RDKAFKA_LOG,
        "socket.timeout.ms": 10000,
        "message.timeout.ms": 15000,
        "reconnect.backoff.ms": 200,
        "reconnect.backoff.max.ms": 1000,
    }
    if ca and protocol in ("SSL", "SASL_SSL"):
        conf["ssl.ca.location"] = ca
    if errors is not None:
        conf["error_cb"] = errors
    return conf


def oauth_conf(server: AuthServer, tokens: OAuthTokens, errors: ErrorLog | None = None,
               protocol: str = "SASL_SSL") -> dict:
    conf = base_conf(server.addr(protocol), protocol, server.ca_path, errors)
    conf.update({"sasl.mechanism": "OAUTHBEARER", "oauth_cb": tokens})
    return conf


def scram_conf(server: AuthServer, user: str, password: str, mechanism: str = "SCRAM-SHA-512",
               errors: ErrorLog | None = None, protocol: str = "SASL_SSL") -> dict:
    conf = base_conf(server.addr(protocol), protocol, server.ca_path, errors)
    conf.update({"sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password})
    return conf


def _producer_conf(conf: dict) -> dict:
    return {**conf, "linger.ms": 5, "acks": "all"}


def _consumer_conf(conf: dict, group: str | None) -> dict:
    return {**{k: v for k, v in conf.items() if k != "message.timeout.ms"},
            "group.id": group or uid("weir-e2e-unused"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            "session.timeout.ms": 10000}


def produce(conf: dict, topic: str, values: list[bytes], timeout: float = 30,
            **extra) -> tuple[list[int], list[KafkaError]]:
    """Produce `values` to partition 0; returns (offsets of delivered, delivery errors)."""
    p = Producer({**_producer_conf(conf), **extra})
    offsets, errors = [], []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            offsets.append(msg.offset())

    for v in values:
        p.produce(topic, value=v, partition=0, on_delivery=cb)
        p.poll(0)
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} messages neither delivered nor failed after {timeout}s"
    return offsets, errors


def produce_ok(conf: dict, topic: str, values: list[bytes], **extra) -> list[int]:
    offsets, errors = produce(conf, topic, values, **extra)
    assert not errors, f"delivery errors: {[(e.code(), e.str()) for e in errors[:5]]}"
    assert len(offsets) == len(values)
    return offsets


def consume_values(conf: dict, topic: str, n: int, group: str | None = None,
                   timeout: float = 30) -> list[bytes]:
    """Read `n` records of partition 0 from the beginning: subscribed in `group` (offsets
    committed at the end) or, without a group, assigned."""
    c = Consumer(_consumer_conf(conf, group))
    got: list[bytes] = []
    try:
        if group:
            c.subscribe([topic])
        else:
            c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for m in c.consume(num_messages=500, timeout=0.5):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(m.error())
                got.append(m.value())
        assert len(got) >= n, f"consumed {len(got)} of {n} records within {timeout}s"
        if group:
            c.commit(asynchronous=False)
            committed = c.committed([TopicPartition(topic, 0)], timeout=10)
            assert committed[0].offset == n, f"committed offset {committed[0].offset} != {n}"
    finally:
        c.close()
    return got


def consume_errors(conf: dict, topic: str, group: str | None, stop_codes: set[int],
                   timeout: float = 20) -> tuple[list[int], list[bytes]]:
    """Try to read partition 0; returns (error codes the consumer surfaced, values read),
    stopping early once one of `stop_codes` is seen."""
    errors = ErrorLog()
    c = Consumer({**_consumer_conf(conf, group), "error_cb": errors})
    codes: list[int] = []
    values: list[bytes] = []
    try:
        if group:
            c.subscribe([topic])
        else:
            c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in c.consume(num_messages=100, timeout=0.5):
                if m.error() is not None:
                    codes.append(m.error().code())
                else:
                    values.append(m.value())
            if stop_codes & (set(codes) | errors.codes()):
                break
    finally:
        c.close()
    return codes + [e.code() for e in errors.errors], values


def expect_auth_failure(conf: dict, timeout: float = 15) -> ErrorLog:
    """A client with `conf` must fail to authenticate: its error callback reports
    _AUTHENTICATION and it cannot list topics."""
    errors = ErrorLog()
    p = Producer({**conf, "error_cb": errors})
    try:
        listed = None
        try:
            listed = p.list_topics(timeout=5)
        except KafkaException:
            pass
        assert listed is None, f"listing topics succeeded without valid credentials: {listed.topics}"
        deadline = time.monotonic() + timeout
        while AUTH_FAILED not in errors.codes() and time.monotonic() < deadline:
            p.poll(0.2)
        assert AUTH_FAILED in errors.codes(), f"no _AUTHENTICATION error reported; errors: {errors}"
    finally:
        p.flush(0)
    return errors


def list_topic_names(conf: dict, timeout: float = 10) -> set[str]:
    a = AdminClient({k: v for k, v in conf.items() if k != "message.timeout.ms"})
    md = a.list_topics(timeout=timeout)
    return {name for name, t in md.topics.items() if t.error is None}


def admin_client(conf: dict) -> AdminClient:
    return AdminClient({k: v for k, v in conf.items() if k != "message.timeout.ms"})


def wait_topic_visible(conf: dict, topic: str, timeout: float = 15, admin=None,
                       partitions: int | None = None) -> None:
    """Waits until `topic` has leaders for all its partitions (`partitions` of them when
    given), asking through `admin` (a new AdminClient for `conf` unless given)."""
    a = admin or admin_client(conf)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        t = a.list_topics(topic=topic, timeout=10).topics.get(topic)
        last = t
        if t is not None and t.error is None and t.partitions and all(
                p.leader >= 0 for p in t.partitions.values()) and (
                partitions is None or len(t.partitions) == partitions):
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {topic} not visible to the client: {last!r} "
                         f"{getattr(last, 'error', None)}")


# -- kafka-python ----------------------------------------------------------------------------
def kp_conf(server: AuthServer, mechanism: str, protocol: str = "SASL_SSL", **extra) -> dict:
    conf = {
        "bootstrap_servers": server.addr(protocol),
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "request_timeout_ms": 15000,
        "bootstrap_timeout_ms": 15000,
    }
    if protocol == "SASL_SSL":
        conf["ssl_cafile"] = server.ca_path
    conf.update(extra)
    return conf


def kp_produce_consume(conf: dict, topic: str, values: list[bytes]) -> list[bytes]:
    """kafka-python: produce `values` to partition 0 (idempotent, the client's default) and
    read them back with an assigned consumer."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KpTP

    prod = KafkaProducer(acks="all", linger_ms=5, **conf)
    try:
        futures = [prod.send(topic, value=v, partition=0) for v in values]
        prod.flush(timeout=30)
        offsets = [f.get(timeout=20).offset for f in futures]
    finally:
        prod.close(timeout=10)
    assert offsets == sorted(offsets) and len(set(offsets)) == len(values), offsets

    cons = KafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                         **conf)
    got: list[bytes] = []
    try:
        tp = KpTP(topic, 0)
        cons.assign([tp])
        cons.seek(tp, offsets[0])
        deadline = time.monotonic() + 30
        while len(got) < len(values) and time.monotonic() < deadline:
            for _tp, msgs in cons.poll(timeout_ms=500).items():
                got.extend(m.value for m in msgs)
    finally:
        cons.close()
    return got


def kp_expect_auth_failure(conf: dict, caplog, server: AuthServer, mechanism: str,
                           timeout_ms: int = 6000) -> str:
    """kafka-python must fail to bootstrap because SASL authentication failed: the client
    itself must report SASL_AUTHENTICATION_FAILED (the server answers the error and keeps the
    connection open briefly before closing, so the client reads the error)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError as KpError

    caplog.set_level(logging.INFO, logger="kafka")
    caplog.clear()
    conf = {**conf, "bootstrap_timeout_ms": timeout_ms}
    consumer = None
    try:
        consumer = KafkaConsumer(group_id=None, **conf)
        topics = consumer.topics()
        raise AssertionError(f"kafka-python connected without valid credentials: {topics}")
    except KpError as e:
        raised = f"{type(e).__name__}: {e}"
    finally:
        if consumer is not None:
            consumer.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "SaslAuthenticationFailed" in text or "SASL_AUTHENTICATION_FAILED" in text, (
        f"kafka-python failed ({raised}) without reporting a SASL authentication failure "
        f"for {mechanism}:\n{text[-2000:]}\n{server.log_tail()}")
    return raised


# -- raw protocol ----------------------------------------------------------------------------
SASL_HANDSHAKE = 17
UNSUPPORTED_SASL_MECHANISM = 33


def sasl_handshake(port: int, mechanism: str, ca: str | None = None,
                   timeout: float = 10) -> tuple[int, list[str]]:
    """SaslHandshake v1 (TLS first if `ca`); returns (error code, enabled mechanisms)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        if ca:
            ctx = ssl.create_default_context(cafile=ca)
            sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.settimeout(timeout)
        body = kproto.header_v1(SASL_HANDSHAKE, 1, 1) + kproto.string(mechanism)
        sock.sendall(kproto.frame(body))

        def recv_exact(n):
            buf = b""
            while len(buf) < n:
                chunk = sock.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            return buf

        (n,) = kproto.struct.unpack(">i", recv_exact(4))
        r = kproto.Reader(recv_exact(n))
        assert r.i32() == 1
        err = r.i16()
        mechanisms = [r.string() for _ in range(r.i32())]
        return err, mechanisms
    finally:
        sock.close()


SASL_AUTHENTICATE = 36
SASL_AUTHENTICATION_FAILED = 58


def tls_socket(port: int, ca: str, timeout: float = 10) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    ctx = ssl.create_default_context(cafile=ca)
    s = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    s.settimeout(timeout)
    return s


def raw_request(sock, api_key: int, version: int, body: bytes, corr: int) -> kproto.Reader | None:
    """One non-flexible request; the response Reader after the header, or None on EOF."""
    sock.sendall(kproto.frame(kproto.header_v1(api_key, version, corr) + body))

    def recv_exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    head = recv_exact(4)
    if head is None:
        return None
    data = recv_exact(kproto.struct.unpack(">i", head)[0])
    if data is None:
        return None
    r = kproto.Reader(data)
    assert r.i32() == corr
    return r


def raw_sasl_authenticate(sock, mechanism: str, auth_bytes: bytes) -> tuple[int, str | None]:
    """SaslHandshake v1 + SaslAuthenticate v1 on `sock`: (error code, error message)."""
    r = raw_request(sock, SASL_HANDSHAKE, 1, kproto.string(mechanism), 1)
    assert r is not None and r.i16() == 0, "SaslHandshake refused"
    r = raw_request(sock, SASL_AUTHENTICATE, 1, kproto.nbytes(auth_bytes), 2)
    assert r is not None, "connection closed before the SaslAuthenticate response"
    return r.i16(), r.string()


def msk_iam_payload(access_key: str, secret_key: str, host: str = "127.0.0.1",
                    region: str = REGION) -> bytes:
    """kafka-python's AWS_MSK_IAM first message (a JSON object of the signed parameters)."""
    from kafka.net.sasl.msk import AwsMskIamClient
    return AwsMskIamClient(host, access_key, secret_key, region).first_message()
