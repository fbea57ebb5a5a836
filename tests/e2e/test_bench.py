"""Smoke test of `weir-bench` against a real Weir: each mode runs for a few seconds and its
counts and content checks must hold (speed is measured in docs/performance.md, not here)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT


def bench_bin() -> Path:
    override = os.environ.get("WEIR_BENCH_BIN")
    return Path(override) if override else REPO_ROOT / "target" / "release" / "weir-bench"


def run_bench(*args: str, timeout: float = 120) -> dict:
    if not bench_bin().exists():
        pytest.fail(f"{bench_bin()} is missing: run `cargo build --release --workspace`", pytrace=False)
    out = subprocess.run([str(bench_bin()), *args, "--json"], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"weir-bench {' '.join(args)} failed:\n{out.stderr[-3000:]}"
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1, out.stdout
    return json.loads(lines[0])


def test_bench_modes_count_and_check_records(weir):
    b = weir.bootstrap
    pid = str(weir.pid)
    produced = run_bench("produce", "--bootstrap", b, "--topic", "bench-smoke", "--partitions", "4",
                         "--records", "20000", "--record-size", "512", "--keys", "--broker-pid", pid)
    assert produced["records"] == 20000
    assert produced["acknowledged"] == 20000 and produced["failed"] == 0
    assert produced["p99_ms"] >= produced["p50_ms"] > 0
    assert produced["broker_peak_rss_mib"] > 0

    consumed = run_bench("consume", "--bootstrap", b, "--topic", "bench-smoke", "--expect", "20000",
                         "--broker-pid", pid)
    assert consumed["records"] == 20000
    assert consumed["checksum_ok"] is True and consumed["bad_records"] == 0

    in_group = run_bench("consume", "--bootstrap", b, "--topic", "bench-smoke", "--expect", "20000",
                         "--group", "bench-smoke-group")
    assert in_group["checksum_ok"] is True

    e2e = run_bench("e2e", "--bootstrap", b, "--topic", "bench-smoke", "--rate", "2000",
                    "--duration", "3")
    assert e2e["records"] >= 5000
    assert e2e["received"] == e2e["records"]
    assert e2e["p50_ms"] > 0


def test_bench_consume_detects_missing_records(weir):
    b = weir.bootstrap
    run_bench("produce", "--bootstrap", b, "--topic", "bench-short", "--partitions", "2", "--records", "1000")
    out = subprocess.run([str(bench_bin()), "consume", "--bootstrap", b, "--topic", "bench-short",
                          "--expect", "1001", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, "a count mismatch must fail the run"


def test_bench_over_sasl_ssl_scram(weir_factory):
    """weir-bench reaches a TLS + SASL listener (librdkafka built with OpenSSL)."""
    from conftest import free_port, weir_bin

    sasl_port, admin_port = free_port(), free_port()
    server = weir_factory("--listener", f"SASL_SSL://127.0.0.1:{sasl_port}?mechanisms=SCRAM-SHA-512",
                          "--admin-listen", f"127.0.0.1:{admin_port}")
    admin = ["--admin", f"http://127.0.0.1:{admin_port}"]
    policy = server.base_dir / "all.json"
    policy.write_text('{"Statement":[{"Effect":"Allow","Action":"kafka-cluster:*","Resource":"*"}]}')
    for args in (["scram", "set", "bench", "--password", "pw"],
                 ["policy", "put", "bench", "all", "--file", str(policy)]):
        out = subprocess.run([str(weir_bin()), "auth", *admin, *args], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    sasl = ["--bootstrap", f"127.0.0.1:{sasl_port}", "--topic", "bench-tls",
            "--set", "security.protocol=SASL_SSL", "--set", "sasl.mechanism=SCRAM-SHA-512",
            "--set", "sasl.username=bench", "--set", "sasl.password=pw",
            "--set", f"ssl.ca.location={server.data_dir / 'tls' / 'ca.pem'}"]
    produced = run_bench("produce", *sasl, "--partitions", "2", "--records", "5000")
    assert produced["acknowledged"] == 5000 and produced["failed"] == 0
    consumed = run_bench("consume", *sasl, "--expect", "5000")
    assert consumed["records"] == 5000 and consumed["checksum_ok"] and consumed["bad_records"] == 0
