#!/usr/bin/env bash
# Reproduces the figures of docs/performance.md: starts `weir serve` with its defaults on a
# free port and a temporary data dir, runs weir-bench against it, prints one JSON line per
# measurement (medians are taken by reading the lines of several runs).
#
#   bash scripts/bench.sh [runs]        # default 3 runs of each measurement
#   BOOTSTRAP=host:port BROKER_PID=pid bash scripts/bench.sh   # measure another broker instead
#   WEIR_ARGS="--object-store s3://b/p?endpoint=..." bash scripts/bench.sh   # extra serve flags
#   ONLY=latency bash scripts/bench.sh     # only the 10k records/s latency measurements
#   E2E_RATE=270000 bash scripts/bench.sh  # the rate of the high-rate end-to-end measurement
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
cargo build --release --workspace >/dev/null
BENCH=target/release/weir-bench
started_here=""
if [ -z "${BOOTSTRAP:-}" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  data=$(mktemp -d)
  # shellcheck disable=SC2086
  target/release/weir serve --listen "127.0.0.1:$port" --data-dir "$data" --admin-listen "127.0.0.1:0" ${WEIR_ARGS:-} >"$data/out.log" 2>"$data/err.log" &
  BROKER_PID=$!
  started_here=1
  BOOTSTRAP="127.0.0.1:$port"
  trap 'kill $BROKER_PID 2>/dev/null; wait $BROKER_PID 2>/dev/null; rm -rf "$data"' EXIT
  for _ in $(seq 100); do grep -q "bootstrap.servers" "$data/out.log" 2>/dev/null && break; sleep 0.1; done
fi
pid_args=()
[ -n "${BROKER_PID:-}" ] && pid_args=(--broker-pid "$BROKER_PID")
b=(--bootstrap "$BOOTSTRAP")
label() { printf '%s ' "$1"; }
for run in $(seq "$RUNS"); do
  if [ "${ONLY:-}" = latency ]; then
    label "e2e 10k/s partitions=8"; $BENCH e2e "${b[@]}" --topic "e-r$run" --partitions 8 --rate 10000 --duration 20 --json "${pid_args[@]}"
    label "produce 10k/s partitions=8"; $BENCH produce "${b[@]}" --topic "e-r$run" --rate 10000 --duration 20 --json "${pid_args[@]}"
    continue
  fi
  for parts in 1 8 64; do
    t="p${parts}-r${run}"
    label "produce acks=all partitions=$parts"; $BENCH produce "${b[@]}" --topic "$t" --partitions "$parts" --records 1000000 --json "${pid_args[@]}"
    label "produce acks=0 partitions=$parts (client limit)"; $BENCH produce "${b[@]}" --topic "$t-a0" --partitions "$parts" --records 1000000 --acks 0 --json
  done
  label "produce acks=1 partitions=8"; $BENCH produce "${b[@]}" --topic "a1-r$run" --partitions 8 --records 1000000 --acks 1 --json "${pid_args[@]}"
  label "consume partitions=8"; $BENCH consume "${b[@]}" --topic "p8-r$run" --expect 1000000 --json "${pid_args[@]}"
  label "e2e 10k/s partitions=8"; $BENCH e2e "${b[@]}" --topic "e-r$run" --partitions 8 --rate 10000 --duration 20 --json "${pid_args[@]}"
  label "produce 10k/s partitions=8"; $BENCH produce "${b[@]}" --topic "e-r$run" --rate 10000 --duration 20 --json "${pid_args[@]}"
  rate="${E2E_RATE:-270000}"
  label "e2e ${rate}/s partitions=8"; $BENCH e2e "${b[@]}" --topic "e-r$run" --rate "$rate" --duration 20 --json "${pid_args[@]}"
done
if [ -n "$started_here" ] && [ "${SOAK:-0}" != 0 ]; then
  label "soak e2e 20k/s 300 s"; $BENCH e2e "${b[@]}" --topic soak --partitions 8 --rate 20000 --duration 300 --json "${pid_args[@]}"
fi
