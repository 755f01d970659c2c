#!/usr/bin/env bash
# Measures what an idle `run` costs: resident memory and wake-ups (context switches of all its
# threads) over a window, with 100 policies x 10 servers against a local simulated provider.
#   scripts/idle-cost.sh [seconds]     (default 60; builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-60}
cargo build --release --quiet
bin=target/release/snapshot-scheduler
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

port=18187
servers=$(seq -s, 1001 2000)
# shellcheck disable=SC2086
$bin simulate-provider --listen 127.0.0.1:$port --token idle $(printf -- '--server %s ' $(seq 1001 2000)) >"$work/sim.log" 2>&1 &
{
  printf '[api]\nbase_url = "http://127.0.0.1:%s/api/v1"\ntoken_env = "IDLE_TOKEN"\n\n' "$port"
  printf '[daemon]\nstate_dir = "%s/state"\n\n' "$work"
  for p in $(seq 0 99); do
    first=$((1001 + p * 10))
    printf '[[policy]]\nname = "p%s"\nschedule = "30 2 * * *"\ncatch_up = false\nkeep = 1\nservers = [%s]\n\n' \
      "$p" "$(seq -s, "$first" $((first + 9)))"
  done
} >"$work/config.toml"
sleep 1
IDLE_TOKEN=idle $bin -q -c "$work/config.toml" run &
pid=$!
sleep 5
switches() { cat /proc/"$pid"/task/*/status | awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s}'; }
before=$(switches)
sleep "$window"
after=$(switches)
rss=$(awk '/^VmRSS/ {print $2}' /proc/"$pid"/status)
threads=$(ls /proc/"$pid"/task | wc -l)
echo "policies: 100, servers: 1000, window: ${window}s"
echo "resident memory (VmRSS): $((rss / 1024)) MiB ($rss kB), threads: $threads"
echo "context switches in ${window}s (all threads): $((after - before))"
kill -TERM "$pid"; wait "$pid" || true
