"""Fixtures that run the real `weir` binary for the end-to-end tests.

Nothing here builds anything: `scripts/test.sh` runs `cargo build --release` first.
The binary is `target/release/weir` unless the environment variable WEIR_BIN names
another one.

Fixtures:
- `weir`            a fresh server (own port, own data dir) for one test.
- `weir_module`     one server shared by the tests of a module; a module may set
                    `WEIR_ARGS = [...]` to pass extra `weir serve` flags to it.
- `weir_factory`    `weir_factory(*extra_args)` starts servers with extra flags for one test.

Each yields a `WeirServer` with `.bootstrap`, `.port`, `.data_dir`, `.kill9()`,
`.restart()`, `.terminate()`, `.alive()` and `.log_tail()`.
When a test fails, the tail of every running server's log is attached to its report.

DynamoDB: `dynamodb_endpoint()` is the DynamoDB-compatible server of the test set-up:
WEIR_TEST_DYNAMODB_ENDPOINT when set (scripts/test.sh starts one), else a moto server this
session starts on 127.0.0.1 (scripts/moto_server.py). With WEIR_E2E_METADATA=dynamodb every
server gets `--metadata dynamodb://<fresh prefix>` on that endpoint, and with
WEIR_E2E_OBJECT_STORE=s3 `--object-store s3://weir-e2e/<fresh prefix>` on the same moto
server, so the same tests run against the AWS backends.

Storage nodes: with WEIR_E2E_STORAGE=node every server gets its own `weir storage` node (and a
`weir metadata` service unless its metadata is already shared) and reaches them over QUIC;
its storage flags (object store, flush and cache settings) go to the node.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from helpers import forget_admin

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

# Every server started and not yet stopped, for log tails on failure and for cleanup.
_LIVE_SERVERS: list["WeirServer"] = []


def weir_bin() -> Path:
    override = os.environ.get("WEIR_BIN")
    return Path(override) if override else REPO_ROOT / "target" / "release" / "weir"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Credentials for the local DynamoDB-compatible server (it accepts any).
for _k, _v in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
               ("AWS_REGION", "us-east-1")):
    os.environ.setdefault(_k, _v)

_MOTO: dict = {}


def dynamodb_endpoint() -> str:
    """The DynamoDB-compatible endpoint for this session (started on first use)."""
    given = os.environ.get("WEIR_TEST_DYNAMODB_ENDPOINT")
    if given:
        return given
    if "endpoint" in _MOTO:
        return _MOTO["endpoint"]
    port = free_port()
    log = open(tempfile.mktemp(prefix="weir-e2e-moto-", suffix=".log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "scripts" / "moto_server.py"), "127.0.0.1", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start (see {log.name})")
            time.sleep(0.2)
    _MOTO.update(endpoint=endpoint, proc=proc)
    atexit.register(lambda: proc.poll() is None and proc.kill())
    return endpoint


def dynamodb_url(prefix: str | None = None) -> str:
    prefix = prefix or f"e2e{uuid.uuid4().hex[:12]}"
    return f"dynamodb://{prefix}?endpoint={dynamodb_endpoint()}&region=us-east-1"


S3_BUCKET = "weir-e2e"


def s3_endpoint() -> str:
    """The S3-compatible endpoint (the same moto server), with the test bucket created."""
    endpoint = os.environ.get("WEIR_TEST_S3_ENDPOINT") or dynamodb_endpoint()
    if _MOTO.get("bucket") != endpoint:
        import boto3
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        try:
            s3.create_bucket(Bucket=S3_BUCKET)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        _MOTO["bucket"] = endpoint
    return endpoint


def s3_url(prefix: str | None = None) -> str:
    prefix = prefix or f"e2e{uuid.uuid4().hex[:12]}"
    return f"s3://{S3_BUCKET}/{prefix}?endpoint={s3_endpoint()}&region=us-east-1"


class WeirService:
    """One `weir metadata` or `weir storage` process (a QUIC service), restartable on the same
    port and data dir. `.url` is the quic:// URL it printed (with ?ca= when it generated its
    own certificates)."""

    def __init__(self, base: Path, kind: str, args=()):
        self.kind = kind
        self.data_dir = base / f"{kind}-service"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.args = [str(a) for a in args]
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.log = base / f"{kind}-service.log"
        self.out = base / f"{kind}-service.out"

    def start(self) -> "WeirService":
        cmd = [str(weir_bin()), self.kind, "--listen", f"127.0.0.1:{self.port}",
               "--data-dir", str(self.data_dir), *self.args]
        self.out.write_text("")
        with open(self.log, "ab") as log, open(self.out, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            m = re.search(rf"weir {self.kind} is ready: (quic://\S+)", self.out.read_text())
            if m:
                self.url = m.group(1)
                return self
            assert self.proc.poll() is None, \
                f"weir {self.kind} exited:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"weir {self.kind} not ready:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                assert self.proc.wait(timeout=30) == 0
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise


@pytest.fixture
def weir_service(tmp_path):
    """`weir_service(kind, *args)` starts a `weir metadata` or `weir storage` process for one
    test; killed at the end if still running."""
    services: list[WeirService] = []

    def make(kind: str, *args, start: bool = True) -> WeirService:
        svc = WeirService(tmp_path / f"svc{len(services)}", kind, args)
        services.append(svc)
        return svc.start() if start else svc

    yield make
    for svc in services:
        if svc.proc and svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait(timeout=10)


class WeirServer:
    """One `weir serve` process, restartable on the same port and data dir."""

    def __init__(self, base_dir: Path, extra_args=(), port: int | None = None):
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.base_dir / "weir.log"
        self.port = port or free_port()
        self.extra_args = [str(a) for a in extra_args]
        if (os.environ.get("WEIR_E2E_METADATA") == "dynamodb"
                and "--metadata" not in self.extra_args):
            self.extra_args += ["--metadata", dynamodb_url()]
        # WEIR_E2E_STORAGE=node: the storage service runs as a `weir storage` node (with a
        # `weir metadata` service unless the metadata is already shared), reached over QUIC.
        self.services: list[WeirService] = []
        self.node_mode = (os.environ.get("WEIR_E2E_STORAGE") == "node"
                          and "--storage" not in self.extra_args)
        if (os.environ.get("WEIR_E2E_OBJECT_STORE") == "s3"
                and "--object-store" not in self.extra_args):
            self.extra_args += ["--object-store", s3_url()]
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _start_services(self) -> None:
        """Node mode: starts the metadata service and the storage node this server uses, and
        moves the storage flags (object store, flush and cache settings) to the node."""
        args = self.extra_args
        if "--metadata" not in args:
            meta = WeirService(self.base_dir, "metadata").start()
            self.services.append(meta)
            args += ["--metadata", meta.url]
        node_args = ["--metadata", args[args.index("--metadata") + 1]]
        for flag in ("--object-store", "--flush-bytes", "--flush-interval-ms",
                     "--max-buffered-bytes", "--cache-bytes", "--disk-cache-bytes"):
            if flag in args:
                i = args.index(flag)
                node_args += [flag, args[i + 1]]
                if flag == "--object-store":
                    del args[i:i + 2]
        node = WeirService(self.base_dir, "storage", node_args).start()
        self.services.append(node)
        args += ["--storage", node.url]

    # -- addresses -----------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- lifecycle -----------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            str(weir_bin()), "serve",
            "--listen", self.bootstrap,
            "--data-dir", str(self.data_dir),
            *self.extra_args,
        ]

    def start(self) -> "WeirServer":
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        binary = weir_bin()
        if not binary.exists():
            pytest.fail(f"weir binary not found at {binary} (build it with `cargo build "
                        f"--release`, or set WEIR_BIN)", pytrace=False)
        if self.node_mode and not self.services:
            self._start_services()
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
            offset = log.tell()
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        finally:
            log.close()
        if self not in _LIVE_SERVERS:
            _LIVE_SERVERS.append(self)
        self._wait_ready(offset)
        return self

    def _wait_ready(self, offset: int) -> None:
        needle = f"bootstrap.servers={self.bootstrap}".encode()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                if needle in f.read():
                    return
            if self.proc.poll() is not None:
                pytest.fail(f"weir exited with code {self.proc.returncode} before it was "
                            f"ready (start #{self.starts}).\n{self.log_tail()}", pytrace=False)
            time.sleep(0.05)
        self._force_kill()
        pytest.fail(f"weir did not print {needle.decode()!r} within {READY_TIMEOUT_S:.0f}s "
                    f"(start #{self.starts}).\n{self.log_tail()}", pytrace=False)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the server and reap it."""
        assert self.alive(), f"kill9: server is not running\n{self.log_tail()}"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM; asserts a graceful exit with code 0 within `timeout` seconds."""
        assert self.alive(), f"terminate: server is not running\n{self.log_tail()}"
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._force_kill()
            raise AssertionError(f"weir did not exit within {timeout}s of SIGTERM\n"
                                 f"{self.log_tail()}")
        assert rc == 0, f"weir exited with code {rc} after SIGTERM\n{self.log_tail()}"
        return rc

    def restart(self) -> "WeirServer":
        """Start again on the same port and data dir (gracefully stops a running server)."""
        if self.alive():
            self.terminate()
        return self.start()

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it lingers. Never raises."""
        if self.alive():
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self._force_kill()
        if self in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(self)
        forget_admin(self.bootstrap)
        for svc in reversed(self.services):
            if svc.proc and svc.proc.poll() is None:
                svc.proc.kill()
                svc.proc.wait(timeout=10)

    def _force_kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    # -- diagnostics ---------------------------------------------------------------
    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- tail of {self.log_path} ---\n{tail}\n--- end of log ---"

    def __repr__(self) -> str:
        return f"WeirServer({self.bootstrap}, pid={self.pid}, data_dir={self.data_dir})"


def _cleanup_all():
    for server in list(_LIVE_SERVERS):
        server.stop()


atexit.register(_cleanup_all)


def _make_base_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"weir-e2e-{prefix}-"))


@pytest.fixture
def weir_factory(request):
    servers: list[WeirServer] = []
    dirs: list[Path] = []

    def make(*extra_args, start=True) -> WeirServer:
        base = _make_base_dir(request.node.name[:40].replace("/", "_"))
        dirs.append(base)
        server = WeirServer(base, extra_args)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for d in dirs:
        if failed or os.environ.get("WEIR_KEEP_DATA"):
            print(f"keeping weir data dir {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def weir(weir_factory) -> WeirServer:
    return weir_factory()


@pytest.fixture(scope="module")
def weir_module(request):
    extra = getattr(request.module, "WEIR_ARGS", [])
    base = _make_base_dir(request.module.__name__.rsplit(".", 1)[-1])
    server = WeirServer(base, extra)
    server.start()
    yield server
    server.stop()
    if not os.environ.get("WEIR_KEEP_DATA"):
        shutil.rmtree(base, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
    if report.failed and report.when in ("setup", "call"):
        for server in list(_LIVE_SERVERS):
            state = "running" if server.alive() else (
                f"NOT running (exit code {server.proc.returncode})" if server.proc else "never started")
            report.sections.append(
                (f"weir server {server.bootstrap} ({state})", server.log_tail(80)))
