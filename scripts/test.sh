#!/usr/bin/env bash
# Build Weir and run every test: the Rust workspace tests, then the end-to-end suite
# (tests/e2e) that drives the real `weir` binary with real Kafka clients.
#
# Works on a fresh Debian machine as root with no stdin: it installs what is missing
# (kcat, Python venv support, Node.js) and keeps Python packages in .venv and kafkajs in
# tests/e2e/js/node_modules.
#
# An S3- and DynamoDB-compatible server (moto, scripts/moto_server.py) runs on 127.0.0.1 for
# the whole run: the metadata conformance suite and the S3 storage tests run against it, and
# the backend-dependent end-to-end tests run a second time with every server on
# `--metadata dynamodb://... --object-store s3://...` (WEIR_E2E_METADATA, WEIR_E2E_OBJECT_STORE).
# Then the produce/consume tests run a third time with every gateway reaching a `weir
# storage` node and a `weir metadata` service over QUIC (WEIR_E2E_STORAGE=node).
#
# Environment:
#   WEIR_BIN        test this binary instead of target/release/weir
#   PYTEST_ARGS     extra arguments for pytest (e.g. "-k produce -x")
#   SKIP_CARGO=1    skip cargo build/test (only with WEIR_BIN or an existing build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
export DEBIAN_FRONTEND=noninteractive

log() { printf '\n==> %s\n' "$*"; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq </dev/null
    apt_updated=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

# -- system tools --------------------------------------------------------------------------
if ! { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; }; then
  log "installing OpenSSL headers (weir-bench's librdkafka links OpenSSL for TLS listeners)"
  apt_install pkg-config libssl-dev
fi
if ! command -v kcat >/dev/null 2>&1; then
  log "installing kcat"
  apt_install kcat
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "installing Node.js"
  apt_install nodejs npm
fi
if ! command -v python3 >/dev/null 2>&1; then
  log "installing Python"
  apt_install python3 python3-venv
fi

# -- Python venv ---------------------------------------------------------------------------
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  if ! python3 -m venv "$VENV" </dev/null; then
    rm -rf "$VENV"
    pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    apt_install python3-venv "python${pyver}-venv" || apt_install python3-venv
    python3 -m venv "$VENV" </dev/null
  fi
fi
log "installing Python test dependencies"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r tests/e2e/requirements.txt </dev/null

# -- DynamoDB-compatible server (moto) -----------------------------------------------------
MOTO_PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
MOTO_LOG="$(mktemp -t weir-moto.XXXXXX.log)"
log "starting moto on 127.0.0.1:$MOTO_PORT (log: $MOTO_LOG)"
"$VENV/bin/python" scripts/moto_server.py 127.0.0.1 "$MOTO_PORT" >"$MOTO_LOG" 2>&1 </dev/null &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$MOTO_PORT/moto-api/', timeout=1)" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$MOTO_PID" 2>/dev/null; then
    echo "moto exited; its log:" >&2; cat "$MOTO_LOG" >&2; exit 1
  fi
  sleep 0.2
done
# moto accepts any credentials; never let tests pick up real ones.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_ENDPOINT_URL_DYNAMODB
export WEIR_TEST_DYNAMODB_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export WEIR_TEST_REQUIRE_DYNAMODB=1
export WEIR_TEST_S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export WEIR_TEST_S3_BUCKET=weir-test
export WEIR_TEST_REQUIRE_S3=1
"$VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$WEIR_TEST_S3_ENDPOINT').create_bucket(Bucket='weir-test')"

# -- kafkajs -------------------------------------------------------------------------------
log "installing kafkajs"
(
  cd tests/e2e/js
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error </dev/null
  else
    npm install --no-audit --no-fund --loglevel=error </dev/null
  fi
  node --check kafkajs_tool.js
)

# -- Rust ------------------------------------------------------------------------------------
if [ "${SKIP_CARGO:-0}" != 1 ]; then
  log "cargo build --release --workspace"
  cargo build --release --workspace
  log "cargo test --workspace --release"
  cargo test --workspace --release
fi

# -- end-to-end --------------------------------------------------------------------------------
WEIR_BIN="${WEIR_BIN:-$ROOT/target/release/weir}"
export WEIR_BIN
if [ ! -x "$WEIR_BIN" ]; then
  echo "weir binary not found at $WEIR_BIN" >&2
  exit 1
fi
log "end-to-end tests against $WEIR_BIN"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pytest tests/e2e -v ${PYTEST_ARGS:-} </dev/null

# The AWS pass repeats what the backends decide: the log (produce, fetch, offsets by time,
# kill -9), group offsets, producer state, compaction and retention switches, objects and
# their caches, leadership and placements, credential records, and tenant and cluster
# records (a tenant cluster's life, its log, its groups and its kill -9). What only the gateway
# decides (the wire guard, bad input, SASL mechanisms, connection limits, compression
# codecs, the infra files, the memory budget, the CLI) ran above and is not run twice;
# test_metadata.py and test_storage_nodes.py start their own DynamoDB and node shapes.
log "the backend-dependent end-to-end tests again, on the AWS backends: metadata in DynamoDB, objects in S3 (moto)"
# shellcheck disable=SC2086
WEIR_E2E_METADATA=dynamodb WEIR_E2E_OBJECT_STORE=s3 "$VENV/bin/python" -m pytest -v ${PYTEST_ARGS:-} \
  tests/e2e/test_produce_consume.py tests/e2e/test_groups.py tests/e2e/test_idempotence.py \
  tests/e2e/test_durability.py tests/e2e/test_list_offsets.py tests/e2e/test_compaction.py \
  tests/e2e/test_retention.py tests/e2e/test_storage.py tests/e2e/test_scaling.py \
  tests/e2e/test_admin.py \
  tests/e2e/test_tenants.py::test_control_plane_two_tenants \
  tests/e2e/test_tenants.py::test_confluent_idempotent_produce_and_group_consume \
  tests/e2e/test_tenants.py::test_delete_cluster_removes_topics_and_closes_the_port \
  tests/e2e/test_tenants.py::test_kill9_restart_keeps_tenant_cluster </dev/null

log "produce/consume/group/idempotence/durability/scaling end-to-end tests again, through a 'weir storage' node and a 'weir metadata' service over QUIC"
# shellcheck disable=SC2086
WEIR_E2E_STORAGE=node "$VENV/bin/python" -m pytest -v ${PYTEST_ARGS:-} \
  tests/e2e/test_produce_consume.py tests/e2e/test_groups.py tests/e2e/test_idempotence.py \
  tests/e2e/test_durability.py tests/e2e/test_scaling.py </dev/null
