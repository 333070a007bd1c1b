#!/usr/bin/env bash
# Runs Gale's whole-system benchmarks; each prints ratios against a reference
# measured in the same run. Needs wrk (apt-get install wrk) and, for the
# reference host, wasmtime-cli 48 on PATH (or WASMTIME=path):
#   cargo install wasmtime-cli@48.0.8 --locked
# The cdc scenario needs PostgreSQL's binaries (initdb, postgres,
# pg_recvlogical) under /usr/lib/postgresql/*/bin; it runs its own server.
# The brokers scenario uses the machine's NATS server (127.0.0.1:4222, with
# JetStream); it makes and deletes streams of its own.
#
# Usage: bench/run.sh [SCENARIO [OPTIONS...]]...
#   SCENARIO: http, cold-start, spike, idle, events, lambda, buckets, cdc,
#   brokers, isolation
#   (default: all).
#   OPTIONS go to that scenario (see target/release/gale-bench SCENARIO --help),
#   e.g. bench/run.sh http --seconds 6 --rounds 3 cold-start
#
# Prints each scenario's output and writes the whole run, with the date, the
# machine, the commit and this command, to bench/RESULTS.md: the latest
# run's results (git history keeps earlier ones). The file is replaced only
# when the run ends; a failed scenario is recorded and the others still run.
set -euo pipefail
command=$(printf '%q ' "$0" "$@")
command=${command% }
cd "$(dirname "$0")/.."

names=(http cold-start spike idle events lambda buckets cdc brokers isolation)
is_scenario() {
  local n
  for n in "${names[@]}"; do [ "$1" = "$n" ] && return 0; done
  return 1
}

# One entry per scenario: its name and options, as gale-bench takes them.
runs=()
for arg in "$@"; do
  if is_scenario "$arg"; then
    runs+=("$arg")
  elif [ ${#runs[@]} -gt 0 ]; then
    runs[-1]+=" $(printf '%q' "$arg")"
  else
    echo "bench/run.sh: $arg is not a scenario (${names[*]})" >&2
    exit 2
  fi
done
[ ${#runs[@]} -gt 0 ] || runs=("${names[@]}")

cargo build --release -p gale -p gale-bench
# A scenario that fails records its error, not a stack trace of gale-bench
# (RUST_BACKTRACE=1 in the environment would add one to every error).
export RUST_LIB_BACKTRACE="${RUST_LIB_BACKTRACE:-0}"
bin="${CARGO_TARGET_DIR:-target}/release/gale-bench"

results=bench/RESULTS.md
partial=$(mktemp bench/.RESULTS.md.XXXXXX)
output=$(mktemp)
trap 'rm -f "$partial" "$output"' EXIT

first() { # the value of the first line of FILE that starts with KEY
  sed -n "s/^$2[[:space:]]*:[[:space:]]*//p" "$1" 2>/dev/null | head -n 1
}
cpu=$(first /proc/cpuinfo 'model name')
[ -n "$cpu" ] || cpu=$(uname -m)
cpus="$(nproc --all) logical CPUs"
[ "$(nproc)" = "$(nproc --all)" ] || cpus="$(nproc) of $cpus available"
memory=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || true)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
changed=$(git status --porcelain --untracked-files=no -- . ":(exclude)$results" 2>/dev/null || true)
if [ -n "$changed" ]; then
  tree="with uncommitted changes to: $(echo "$changed" | cut -c4- | paste -sd, - | sed 's/,/, /g')"
else
  tree="clean"
fi
wasmtime_version=$("${WASMTIME:-wasmtime}" --version 2>/dev/null || echo "not found")

{
  echo "# Benchmark results"
  echo
  echo "Written by \`bench/run.sh\`, replaced by each run: these are the latest"
  echo "run's figures; earlier runs are in this file's git history. Each scenario"
  echo "measures its references in the same run, on the same machine, and prints"
  echo "ratios against them; compare ratios rather than absolute figures across"
  echo "runs. What each scenario measures, and its goal: the README's Benchmarks."
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $cpu; $cpus; ${memory:-unknown} of memory; $(uname -srm)"
  echo "- commit: \`$commit\`, $tree"
  echo "- command: \`$command\`"
  echo "- toolchain: $(rustc --version); reference host: $wasmtime_version"
} >"$partial"

failed=0
for run in "${runs[@]}"; do
  eval "words=($run)" # quoted with printf %q above
  echo "== gale-bench $run" >&2
  status=0
  # stdout and stderr in the order they came (stdout is line-buffered):
  # the per-round lines on stderr show how much the rounds spread.
  "$bin" "${words[@]}" 2>&1 | tee "$output" || status=$?
  {
    echo
    echo "## ${words[0]}"
    echo
    echo "\`gale-bench $run\`"
    if [ "$status" -ne 0 ]; then
      echo
      echo "**Failed** (exit status $status); its output up to the failure:"
    fi
    echo
    echo '```'
    cat "$output"
    echo '```'
  } >>"$partial"
  [ "$status" -eq 0 ] || failed=1
done

chmod 0644 "$partial"
mv "$partial" "$results"
trap 'rm -f "$output"' EXIT
echo "results written to $results" >&2
exit "$failed"
