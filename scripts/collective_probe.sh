#!/usr/bin/env bash
# Two node processes on 127.0.0.1 all-reduce through burn-collective's global level (see
# crates/bert-train/examples/collective_probe.rs): prints each node's rounds, exits non-zero
# if a round did not finish. Usage: scripts/collective_probe.sh [ring|tree|centralized] [ROUNDS]
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p bert-train --example collective_probe || exit 1
probe=${CARGO_TARGET_DIR:-target}/debug/examples/collective_probe
port=$((20000 + RANDOM % 20000))
"$probe" orchestrator "$port" >/dev/null 2>&1 &
orchestrator=$!
trap 'kill $orchestrator 2>/dev/null' EXIT
sleep 1
"$probe" node 0 2 "$port" $((port + 1)) "${1:-ring}" "${2:-5}" 2>/dev/null &
first=$!
"$probe" node 1 2 "$port" $((port + 2)) "${1:-ring}" "${2:-5}" 2>/dev/null
second=$?
wait "$first"
first=$?
[ "$first" -eq 0 ] && [ "$second" -eq 0 ]
