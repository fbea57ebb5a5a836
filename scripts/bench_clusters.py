#!/usr/bin/env python3
"""Benchmark: many idle serverless clusters on one `weir serve` (issue 15). Not a test; run by
hand, with the e2e venv (boto3, confluent-kafka, aws-msk-iam-sasl-signer-python):

    .venv/bin/python scripts/bench_clusters.py                    # 1,000 clusters x 10 partitions
    .venv/bin/python scripts/bench_clusters.py --clusters 20      # quick check

It starts `weir serve` (127.0.0.1 only) with a `--cluster-ports` range big enough for every
cluster and an admin port, samples the process's baseline (RSS from /proc/PID/status, CPU as
utime+stime from /proc/PID/stat over an idle window), creates one tenant and then N clusters
through the MSK API (boto3, SigV4 with the tenant's root key), timing each CreateClusterV2
until DescribeClusterV2 says ACTIVE, creates one topic of P partitions in each cluster
(confluent-kafka AdminClient over SASL_SSL + OAUTHBEARER with the MSK signer, a few at a
time), lets the server sit idle, samples again and prints a table: the time to create a
cluster (mean/p50/p99/max), RSS and CPU% idle against the baseline, and RSS per idle cluster.
It stops the server it started (by PID) and exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
SERVERLESS = {
    "VpcConfigs": [{"SubnetIds": ["subnet-1"]}],
    "ClientAuthentication": {"Sasl": {"Iam": {"Enabled": True}}},
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(Exception):
    pass


# -- ports ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def port_range(span: int) -> tuple[int, int]:
    """`span` contiguous free ports below Linux's ephemeral range (32768+)."""
    lo_min, hi_max = 20000, 32700
    if span > hi_max - lo_min:
        raise BenchError(f"--clusters {span} needs more ports than {lo_min}-{hi_max} holds")
    rng = random.SystemRandom()
    for _ in range(50):
        base = rng.randrange(lo_min, hi_max - span + 1)
        if all(bindable(p) for p in range(base, base + span)):
            return base, base + span - 1
    raise BenchError(f"no {span} contiguous free ports in {lo_min}-{hi_max}")


# -- /proc sampling ------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[11]) + int(fields[12])      # utime, stime (fields 14 and 15)


def sample_idle(server: "Server", seconds: float) -> dict:
    """CPU% over `seconds` of idleness, then RSS, threads and open fds."""
    pid = server.proc.pid
    t0, c0 = time.monotonic(), cpu_ticks(pid)
    time.sleep(seconds)
    server.check_alive()
    t1, c1 = time.monotonic(), cpu_ticks(pid)
    return {
        "cpu_pct": 100.0 * (c1 - c0) / CLK_TCK / (t1 - t0),
        "rss_kib": rss_kib(pid),
        "threads": threads(pid),
        "fds": open_fds(pid),
    }


# -- the server ----------------------------------------------------------------------------
class Server:
    def __init__(self, binary: Path, data_dir: Path, cluster_ports: tuple[int, int]):
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.admin_port = free_port()
        self.cluster_ports = cluster_ports
        self.log_path = data_dir.parent / f"{data_dir.name}-weir.log"
        self.proc: subprocess.Popen | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ca(self) -> str:
        return str(self.data_dir / "tls" / "ca.pem")

    def start(self, timeout: float = 60) -> None:
        cmd = [str(self.binary), "serve", "--listen", f"127.0.0.1:{self.port}",
               "--data-dir", str(self.data_dir),
               "--admin-listen", f"127.0.0.1:{self.admin_port}",
               "--cluster-ports", f"{self.cluster_ports[0]}-{self.cluster_ports[1]}"]
        log(f"starting {' '.join(cmd)} (log: {self.log_path})")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            text = self.log_path.read_text(errors="replace")
            if any(l.startswith("weir is ready:") for l in text.splitlines()) and \
                    port_open(self.admin_port):
                return
            time.sleep(0.1)
        raise BenchError(f"weir not ready within {timeout}s\n{self.tail()}")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"weir is not running (exit code {code})\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return "\n".join(lines)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log(f"weir (pid {self.proc.pid}) did not exit 30 s after SIGTERM; SIGKILL")
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def http_json(method: str, url: str, body=None, timeout: float = 15):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


# -- the clusters --------------------------------------------------------------------------
def msk_client(server: Server, key: dict):
    import boto3
    from botocore.config import Config
    session = boto3.session.Session(aws_access_key_id=key["access_key_id"],
                                    aws_secret_access_key=key["secret_access_key"],
                                    region_name=REGION)
    return session.client("kafka", endpoint_url=server.admin_url,
                          config=Config(retries={"max_attempts": 1, "mode": "standard"},
                                        connect_timeout=5, read_timeout=30,
                                        max_pool_connections=16))


def create_one(msk, name: str, timeout: float = 30) -> tuple[str, float]:
    """CreateClusterV2 and poll DescribeClusterV2 until ACTIVE: (ARN, seconds)."""
    t0 = time.monotonic()
    arn = msk.create_cluster_v2(ClusterName=name, Serverless=SERVERLESS)["ClusterArn"]
    while True:
        state = msk.describe_cluster_v2(ClusterArn=arn)["ClusterInfo"]["State"]
        if state == "ACTIVE":
            return arn, time.monotonic() - t0
        if state != "CREATING":
            raise BenchError(f"cluster {name} went {state}")
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"cluster {name} not ACTIVE within {timeout}s")
        time.sleep(0.005)


class SignerTokens:
    def __init__(self, key: dict):
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
        from botocore.credentials import CredentialProvider, Credentials

        class Static(CredentialProvider):
            METHOD = "weir-bench-static"
            CANONICAL_NAME = "WeirBenchStatic"

            def load(self):
                return Credentials(key["access_key_id"], key["secret_access_key"])

        self._provider = Static()
        self._msk = MSKAuthTokenProvider
        self._lock = threading.Lock()

    def __call__(self, _config):
        with self._lock:
            token, expiry_ms = self._msk.generate_auth_token_from_credentials_provider(
                REGION, self._provider)
        return token, expiry_ms / 1000.0


def create_topic(bootstrap: str, ca: str, tokens: SignerTokens, topic: str,
                 partitions: int, timeout: float = 30) -> float:
    from confluent_kafka.admin import AdminClient, NewTopic
    t0 = time.monotonic()
    adm = AdminClient({"bootstrap.servers": bootstrap, "security.protocol": "SASL_SSL",
                       "ssl.ca.location": ca, "sasl.mechanism": "OAUTHBEARER",
                       "oauth_cb": tokens, "socket.timeout.ms": 10000,
                       "logger": logging.getLogger("rdkafka")})
    fs = adm.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                           operation_timeout=timeout, request_timeout=timeout)
    fs[topic].result(timeout=timeout)
    md = adm.list_topics(topic=topic, timeout=timeout).topics.get(topic)
    if md is None or md.error is not None or len(md.partitions) != partitions:
        raise BenchError(f"{bootstrap}: topic {topic} not there with {partitions} partitions: "
                         f"{md!r} {getattr(md, 'error', None)}")
    return time.monotonic() - t0


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ms_row(label: str, xs: list[float]) -> str:
    return (f"{label:<34}{statistics.mean(xs) * 1e3:>9.1f}{pct(xs, 0.5) * 1e3:>9.1f}"
            f"{pct(xs, 0.99) * 1e3:>9.1f}{max(xs) * 1e3:>9.1f}")


# -- main ----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weir", default=str(REPO_ROOT / "target" / "release" / "weir"),
                    help="the weir binary (default: target/release/weir)")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=10)
    ap.add_argument("--data-dir", help="data directory (default: a temporary one, removed)")
    ap.add_argument("--idle-seconds", type=float, default=30.0,
                    help="idle time before sampling, and the CPU sampling window (default 30)")
    ap.add_argument("--topic-concurrency", type=int, default=4,
                    help="topics created at a time (default 4)")
    args = ap.parse_args()
    if args.clusters < 1 or args.partitions < 1:
        ap.error("--clusters and --partitions must be positive")

    binary = Path(args.weir)
    if not binary.exists():
        print(f"weir binary not found: {binary}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    temp = None
    if args.data_dir:
        data_dir = Path(args.data_dir).resolve()
    else:
        temp = Path(tempfile.mkdtemp(prefix="weir-bench-clusters-"))
        data_dir = temp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    server = Server(binary, data_dir, port_range(args.clusters + 10))
    ok = False
    try:
        server.start()
        log(f"weir pid {server.proc.pid}; cluster ports {server.cluster_ports[0]}-"
            f"{server.cluster_ports[1]}; baseline: idle {args.idle_seconds:.0f}s")
        time.sleep(min(5.0, args.idle_seconds))
        base = sample_idle(server, args.idle_seconds)

        # A tenant may hold a limited number of clusters (the server's per-account limit):
        # when CreateClusterV2 answers TooManyRequestsException, the next tenant takes over.
        tenants: list[dict] = []

        def new_tenant() -> tuple[dict, object]:
            status, tenant = http_json("POST", server.admin_url + "/v1/tenants",
                                       {"name": f"bench-{os.getpid()}-{len(tenants)}"})
            if status not in (200, 201) or not isinstance(tenant, dict):
                raise BenchError(f"POST /v1/tenants answered {status}: {tenant}")
            tenants.append(tenant)
            return tenant, msk_client(server, tenant)

        from botocore.exceptions import ClientError
        tenant, msk = new_tenant()
        log(f"tenant {tenant['account_id']}; creating {args.clusters} clusters")
        create_s: list[float] = []
        clusters: list[tuple[str, str, dict]] = []  # (arn, bootstrap, tenant)
        in_tenant = 0
        t_all = time.monotonic()
        for i in range(args.clusters):
            try:
                arn, took = create_one(msk, f"bench-{i:05d}")
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "TooManyRequestsException" \
                        or in_tenant == 0:
                    raise
                tenant, msk = new_tenant()
                log(f"  tenant limit after {in_tenant} clusters "
                    f"({e.response['Error'].get('Message')}); tenant {tenant['account_id']}")
                in_tenant = 0
                arn, took = create_one(msk, f"bench-{i:05d}")
            in_tenant += 1
            create_s.append(took)
            boot = msk.get_bootstrap_brokers(ClusterArn=arn)["BootstrapBrokerStringSaslIam"]
            clusters.append((arn, boot, tenant))
            if (i + 1) % max(1, args.clusters // 10) == 0:
                log(f"  {i + 1} clusters, last took {took * 1e3:.1f} ms")
        create_total = time.monotonic() - t_all
        listed = 0
        for tenant in tenants:
            m, token = msk_client(server, tenant), None
            while True:
                page = m.list_clusters_v2(**({"NextToken": token} if token else {}))
                listed += len(page["ClusterInfoList"])
                token = page.get("NextToken")
                if not token:
                    break
        if listed != args.clusters:
            raise BenchError(f"ListClustersV2 lists {listed} clusters, not {args.clusters}")
        if len({b for _, b, _ in clusters}) != args.clusters:
            raise BenchError("two clusters share a bootstrap address")

        log(f"creating a topic of {args.partitions} partitions in each cluster "
            f"({args.topic_concurrency} at a time)")
        tokens = {t["account_id"]: SignerTokens(t) for t in tenants}
        topic_s: list[float] = []
        t_topics = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=args.topic_concurrency)
        try:
            futs = [pool.submit(create_topic, boot, server.ca, tokens[t["account_id"]], "bench",
                                args.partitions)
                    for _, boot, t in clusters]
            for n, f in enumerate(as_completed(futs), 1):
                topic_s.append(f.result())
                if n % max(1, args.clusters // 10) == 0:
                    log(f"  {n} topics")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on a failure: no new topics
        topics_total = time.monotonic() - t_topics
        server.check_alive()

        log(f"idle {args.idle_seconds:.0f}s, then sampling over {args.idle_seconds:.0f}s")
        time.sleep(args.idle_seconds)
        after = sample_idle(server, args.idle_seconds)

        n = args.clusters
        d_rss = after["rss_kib"] - base["rss_kib"]
        print()
        print(f"weir serve, {n} clusters x {args.partitions} partitions, idle "
              f"(CPU over {args.idle_seconds:.0f}s; {os.cpu_count()} cores; CPU% of one core)")
        print(f"{'':<34}{'baseline':>12}{'clusters':>12}{'per cluster':>14}")
        print(f"{'RSS (MiB)':<34}{base['rss_kib'] / 1024:>12.1f}{after['rss_kib'] / 1024:>12.1f}"
              f"{d_rss / n:>11.1f} KiB")
        print(f"{'CPU idle (%)':<34}{base['cpu_pct']:>12.2f}{after['cpu_pct']:>12.2f}"
              f"{(after['cpu_pct'] - base['cpu_pct']) / n:>12.5f} %")
        print(f"{'threads':<34}{base['threads']:>12}{after['threads']:>12}"
              f"{(after['threads'] - base['threads']) / n:>14.3f}")
        print(f"{'open fds':<34}{base['fds']:>12}{after['fds']:>12}"
              f"{(after['fds'] - base['fds']) / n:>14.3f}")
        print()
        print(f"{'(ms)':<34}{'mean':>9}{'p50':>9}{'p99':>9}{'max':>9}")
        print(ms_row("create_cluster_v2 -> ACTIVE", create_s))
        print(ms_row(f"create topic ({args.partitions} partitions)", topic_s))
        print(f"all clusters: {create_total:.1f}s ({len(tenants)} tenant(s)); "
              f"all topics: {topics_total:.1f}s")
        ok = True
    except BenchError as e:
        print(f"bench_clusters: {e}", file=sys.stderr)
    except Exception as e:  # a client error, a timeout
        print(f"bench_clusters: {type(e).__name__}: {e}\n{server.tail()}", file=sys.stderr)
    finally:
        server.stop()
        if temp is not None:
            if ok:
                shutil.rmtree(temp, ignore_errors=True)
            else:
                print(f"kept {temp} (weir log: {server.log_path})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
