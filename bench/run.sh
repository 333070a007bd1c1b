#!/usr/bin/env bash
# Runs Gale's whole-system benchmarks; each prints ratios against a reference
# measured in the same run. Needs wrk (apt-get install wrk) and, for the
# reference host, wasmtime-cli 48 on PATH (or WASMTIME=path):
#   cargo install wasmtime-cli@48.0.8 --locked
# Usage: bench/run.sh [http] [cold-start] [spike] [idle] [events] [lambda]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p gale -p gale-bench
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(http cold-start spike idle events lambda)
for s in "${scenarios[@]}"; do
  target/release/gale-bench "$s"
done
