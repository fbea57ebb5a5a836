"""Shared pieces of the tenant and virtual-cluster tests (test_tenants.py).

- `TenantServer`: an `AuthServer` (admin listener, generated TLS set) with an explicit
  `--cluster-ports` range picked at random in 30000-32000 (below Linux's ephemeral ports, so
  parallel servers and `free_port()` do not collide with it).
- `TenantCli`: runs `weir tenants ...` against a server's admin API.
- `http_json`: the operator tenant API (`/v1/tenants`) over plain HTTP.
- `msk_client`: boto3's `kafka` client on the admin listener, SigV4-signed with a tenant key.
- `new_cluster` / `TenantCluster`: CreateClusterV2 (Serverless, IAM), waiting for ACTIVE,
  GetBootstrapBrokers, and the confluent-kafka / kafka-python configurations that reach the
  cluster's `BootstrapBrokerStringSaslIam` over SASL_SSL with the tenant's root key.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import NewTopic

from auth_helpers import (REGION, AuthServer, ErrorLog, _port_open, admin_client, base_conf,
                          signer_oauth, signer_token, wait_topic_visible)
from conftest import weir_bin

ACCOUNT_RE = re.compile(r"^\d{12}$")
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?:-\d+)?"
SERVERLESS = {
    "VpcConfigs": [{"SubnetIds": ["subnet-1"]}],
    "ClientAuthentication": {"Sasl": {"Iam": {"Enabled": True}}},
}
ACTIVE_TIMEOUT_S = 10.0   # the contract says ~2 s; a little slack for a loaded CI machine
GONE_TIMEOUT_S = 10.0     # DELETING -> NotFoundException, and the port closing


def cluster_arn_re(account: str, name: str) -> re.Pattern:
    return re.compile(rf"^arn:aws:kafka:{REGION}:{account}:cluster/{re.escape(name)}/{UUID_RE}$")


# -- the server ------------------------------------------------------------------------------
def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cluster_port_range(span: int = 20) -> tuple[int, int]:
    """A random range of `span` free ports in 30000-32000: (first, last), inclusive."""
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(30000, 32000 - span)
        if all(_bindable(p) for p in range(base, base + span)):
            return base, base + span - 1
    raise RuntimeError("no free cluster port range in 30000-32000")


class TenantServer(AuthServer):
    """`weir serve` with a plaintext `--listen` (the default cluster), `--admin-listen`, and
    `--cluster-ports FIRST-LAST` for the tenant clusters (SASL_SSL, CA `<data-dir>/tls/ca.pem`)."""

    def __init__(self, base_dir: Path, *, span: int = 20, admin_token: str | None = None,
                 extra_args=()):
        self.cluster_ports = cluster_port_range(span)
        self.admin_token = admin_token
        args = ["--cluster-ports", f"{self.cluster_ports[0]}-{self.cluster_ports[1]}"]
        if admin_token:
            args += ["--admin-token", admin_token]
        super().__init__(base_dir, [], plaintext=True, extra_args=[*args, *extra_args])

    def in_range(self, port: int) -> bool:
        return self.cluster_ports[0] <= port <= self.cluster_ports[1]

    @property
    def default_conf(self) -> dict:
        """The default cluster: the server's PLAINTEXT `--listen` address."""
        return base_conf(self.bootstrap, "PLAINTEXT", None, None)

    # -- the operator tenant API (HTTP) --
    def api(self, method: str, path: str, body=None, token: str | None = None):
        tok = token if token is not None else self.admin_token
        return http_json(method, self.admin_url + path, body, token=tok)

    def create_tenant(self, name: str) -> dict:
        status, t = self.api("POST", "/v1/tenants", {"name": name})
        assert status == 200 or status == 201, (status, t)
        assert isinstance(t, dict), t
        assert ACCOUNT_RE.match(str(t.get("account_id", ""))), t
        assert t.get("access_key_id") and t.get("secret_access_key"), t
        return t


def http_json(method: str, url: str, body=None, token: str | None = None,
              timeout: float = 15) -> tuple[int, object]:
    """(HTTP status, parsed JSON body or the raw text when it is not JSON)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text) if text.strip() else None
    except ValueError:
        return status, text


# -- `weir tenants` --------------------------------------------------------------------------
class TenantCli:
    def __init__(self, admin_url: str, token: str | None = None):
        self.admin_url = admin_url
        self.token = token

    def run(self, *args: str, token: str | None = None, timeout: float = 20,
            admin: str | None = None) -> subprocess.CompletedProcess:
        cmd = [str(weir_bin()), "tenants", *args, "--admin", admin or self.admin_url]
        tok = token if token is not None else self.token
        if tok:
            cmd += ["--admin-token", tok]
        env = {k: v for k, v in os.environ.items()
               if k not in ("WEIR_ADMIN_URL", "WEIR_ADMIN_TOKEN")}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess:
        p = self.run(*args, **kw)
        assert p.returncode == 0, (f"`weir tenants {' '.join(args)}` exited {p.returncode}\n"
                                   f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
        return p

    def json(self, *args: str, **kw):
        p = self.ok(*args, "--json", **kw)
        try:
            return json.loads(p.stdout)
        except ValueError:
            raise AssertionError(f"`weir tenants {' '.join(args)} --json` printed no JSON: "
                                 f"{p.stdout[-2000:]!r}")

    def fails(self, *args: str, **kw) -> subprocess.CompletedProcess:
        p = self.run(*args, **kw)
        assert p.returncode != 0, (f"`weir tenants {' '.join(args)}` should have failed; it "
                                   f"printed {p.stdout[-2000:]!r}")
        assert p.stderr.strip(), f"`weir tenants {' '.join(args)}` failed without a message"
        return p


# -- the MSK control plane (boto3) -------------------------------------------------------------
def msk_client(server: AuthServer, key: dict, *, secret: str | None = None,
               access_key_id: str | None = None, validate: bool = True):
    """boto3's `kafka` client on the admin listener, signed with `key` (one attempt per call,
    bounded timeouts, no credentials from the environment or files)."""
    session = boto3.session.Session(
        aws_access_key_id=access_key_id or key["access_key_id"],
        aws_secret_access_key=secret or key["secret_access_key"],
        region_name=REGION)
    return session.client(
        "kafka", endpoint_url=server.admin_url,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                      read_timeout=20, parameter_validation=validate))


def error_code(e: ClientError) -> tuple[str, int]:
    return (e.response.get("Error", {}).get("Code", ""),
            e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def wait_active(msk, arn: str, timeout: float = ACTIVE_TIMEOUT_S) -> dict:
    """Polls DescribeClusterV2 until ACTIVE; only CREATING may come before it."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        info = msk.describe_cluster_v2(ClusterArn=arn)["ClusterInfo"]
        state = info.get("State")
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == "ACTIVE":
            assert set(seen) <= {"CREATING", "ACTIVE"}, f"states before ACTIVE: {seen}"
            return info
        assert state == "CREATING", f"cluster {arn} went {seen}"
        if time.monotonic() > deadline:
            raise AssertionError(f"cluster {arn} not ACTIVE within {timeout}s: {seen}")
        time.sleep(0.05)


def wait_gone(msk, arn: str, timeout: float = GONE_TIMEOUT_S) -> list[str]:
    """Polls DescribeClusterV2 until NotFoundException; returns the states seen before."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        try:
            state = msk.describe_cluster_v2(ClusterArn=arn)["ClusterInfo"].get("State")
        except msk.exceptions.NotFoundException:
            return seen
        seen.append(state)
        assert state == "DELETING", f"deleted cluster {arn} is {state} (states {seen})"
        if time.monotonic() > deadline:
            raise AssertionError(f"cluster {arn} still described {timeout}s after "
                                 f"DeleteCluster: {seen[-3:]}")
        time.sleep(0.05)


def wait_port(port: int, open_: bool, timeout: float) -> float:
    """Until 127.0.0.1:port accepts (open_=True) or refuses (False) a TCP connection;
    returns the seconds it took."""
    t0 = time.monotonic()
    while _port_open(port) != open_:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"port {port} still {'closed' if open_ else 'accepting'} "
                                 f"after {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - t0


def parse_bootstrap(s: str) -> list[tuple[str, int]]:
    out = []
    for hp in s.split(","):
        host, _, port = hp.strip().rpartition(":")
        out.append((host, int(port)))
    return out


@dataclass
class TenantCluster:
    name: str
    arn: str
    bootstrap: str
    port: int
    key: dict
    ca: str
    info: dict = field(default_factory=dict)

    confs: dict = field(default_factory=dict, repr=False)

    def conf(self, key: dict | None = None, errors: ErrorLog | None = None) -> dict:
        """confluent-kafka: SASL_SSL + OAUTHBEARER with the MSK signer's token for `key`
        (the cluster owner's root key unless given). Without `errors`, the same dict (and
        token callback) for the same key, so `cluster_admin` can reuse its AdminClient."""
        key = key or self.key
        if errors is None and key["access_key_id"] in self.confs:
            return self.confs[key["access_key_id"]]
        c = base_conf(self.bootstrap, "SASL_SSL", self.ca, errors)
        c.update({"sasl.mechanism": "OAUTHBEARER", "oauth_cb": signer_oauth(key)})
        if errors is None:
            self.confs[key["access_key_id"]] = c
        return c

    def kp_conf(self, mechanism: str, key: dict | None = None, **extra) -> dict:
        """kafka-python: OAUTHBEARER gets a token provider with the MSK signer; AWS_MSK_IAM
        reads the key from the environment (see `aws_env`)."""
        c = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "ssl_cafile": self.ca,
            "sasl_mechanism": mechanism,
            "request_timeout_ms": 15000,
            "bootstrap_timeout_ms": 15000,
        }
        if mechanism == "OAUTHBEARER":
            c["sasl_oauth_token_provider"] = msk_token_provider(key or self.key)
        c.update(extra)
        return c


def create_cluster(msk, name: str, **extra) -> dict:
    return msk.create_cluster_v2(ClusterName=name, Serverless=SERVERLESS, **extra)


def new_cluster(server: AuthServer, key: dict, name: str, msk=None) -> TenantCluster:
    """CreateClusterV2 -> ACTIVE -> GetBootstrapBrokers; the port accepts connections."""
    msk = msk or msk_client(server, key)
    resp = create_cluster(msk, name)
    arn = resp["ClusterArn"]
    assert resp.get("ClusterName") == name, resp
    assert resp.get("State") in ("CREATING", "ACTIVE"), resp
    assert resp.get("ClusterType") in (None, "SERVERLESS"), resp
    info = wait_active(msk, arn)
    boot = msk.get_bootstrap_brokers(ClusterArn=arn)
    iam = boot.get("BootstrapBrokerStringSaslIam")
    assert iam, f"no BootstrapBrokerStringSaslIam: {boot}"
    (host, port), *rest = parse_bootstrap(iam)
    assert host == "127.0.0.1" and not rest, iam
    # ACTIVE means reachable (a second of slack for the listener task to be scheduled)
    wait_port(port, True, 1.0)
    return TenantCluster(name, arn, iam, port, key, server.ca_path, info)


# -- Kafka helpers over IAM ------------------------------------------------------------------
# A confluent-kafka client with an oauth_cb spends a second in its constructor, so the
# AdminClients of these tests are kept per (bootstrap, token callback) until `forget_admins`.
_ADMINS: dict[tuple, tuple] = {}


def cluster_admin(conf: dict):
    cb = conf.get("oauth_cb")
    k = (conf["bootstrap.servers"], id(cb))
    hit = _ADMINS.get(k)
    if hit is None:
        hit = _ADMINS[k] = (admin_client(conf), cb)  # cb kept: its id stays unique
    return hit[0]


def forget_admins() -> None:
    _ADMINS.clear()


def create_topics(conf: dict, names: list[str], partitions: int = 1, timeout: float = 20) -> None:
    adm = cluster_admin(conf)
    fs = adm.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1)
                            for n in names], operation_timeout=timeout, request_timeout=timeout)
    for n in names:
        fs[n].result(timeout=timeout)
    for n in names:
        wait_topic_visible(conf, n, admin=adm, partitions=partitions)


def metadata(conf: dict, timeout: float = 10):
    return cluster_admin(conf).list_topics(timeout=timeout)


def topic_names(conf: dict) -> set[str]:
    return {n for n, t in metadata(conf).topics.items() if t.error is None}


def produce_spread(conf: dict, topic: str, values: list[bytes], partitions: int,
                   timeout: float = 30, **extra) -> list[tuple[int, int]]:
    """Produce value i to partition i % partitions; returns (partition, offset) per value."""
    p = Producer({**conf, "linger.ms": 5, "acks": "all", **extra})
    out: list[tuple[int, int] | None] = [None] * len(values)
    errors = []

    def cb(i):
        def f(err, msg):
            if err is not None:
                errors.append(err)
            else:
                out[i] = (msg.partition(), msg.offset())
        return f

    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=i % partitions, on_delivery=cb(i))
        p.poll(0)
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} records neither delivered nor failed after {timeout}s"
    assert not errors, [(e.code(), e.str()) for e in errors[:5]]
    return out  # type: ignore[return-value]


def consume_group(conf: dict, topic: str, group: str, n: int, timeout: float = 30) -> list[bytes]:
    """Subscribe in `group`, read `n` records, commit synchronously; returns the values."""
    c = Consumer({**{k: v for k, v in conf.items() if k != "message.timeout.ms"},
                  "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100,
                  "session.timeout.ms": 10000})
    got: list[bytes] = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for m in c.consume(num_messages=500, timeout=0.5):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(m.error())
                got.append(m.value())
        assert len(got) >= n, f"group {group} consumed {len(got)} of {n} records in {timeout}s"
        c.commit(asynchronous=False)
    finally:
        c.close()
    return got


def committed_offsets(conf: dict, group: str, topic: str, partitions: int,
                      timeout: float = 15) -> dict[int, int]:
    """OffsetFetch for `group` (negative: nothing committed), through a consumer of `group`
    that never subscribes."""
    c = Consumer({**{k: v for k, v in conf.items() if k != "message.timeout.ms"},
                  "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=timeout)
    finally:
        c.close()
    return {tp.partition: tp.offset for tp in tps}


def read_partition(conf: dict, topic: str, partition: int, n: int,
                   timeout: float = 30) -> list[bytes]:
    """Up to `n` values of one partition from the beginning (assigned, no group)."""
    c = Consumer({**{k: v for k, v in conf.items() if k != "message.timeout.ms"},
                  "group.id": "weir-e2e-unused", "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest",
                  "fetch.wait.max.ms": 100})
    got: list[bytes] = []
    try:
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        eof = False
        while len(got) < n and not eof and time.monotonic() < deadline:
            for m in c.consume(num_messages=500, timeout=0.5):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof = True
                        continue
                    raise KafkaException(m.error())
                got.append(m.value())
    finally:
        c.close()
    return got


# -- kafka-python ----------------------------------------------------------------------------
def msk_token_provider(key: dict):
    """A kafka-python OAUTHBEARER token provider returning the MSK signer's token."""
    from kafka.net.sasl.oauth import AbstractTokenProvider

    class _Provider(AbstractTokenProvider):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def token(self):
            self.calls += 1
            return signer_token(key["access_key_id"], key["secret_access_key"])[0]

    return _Provider()


def aws_env(monkeypatch, tmp_path: Path, key: dict, region: str = REGION) -> None:
    """Only `key` (and `region`) for botocore's credential chain, as kafka-python's
    AWS_MSK_IAM reads them."""
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
