#!/usr/bin/env bash
# Samples where the CPU goes while a `chatfleet bench` scenario runs: attaches `perf record`
# (software cpu-clock, so it also works in VMs without hardware counters) to the newest
# redis-server and chatfleet gateway and worker processes for SECONDS, then prints each one's
# top symbols. Start it a few seconds into a run:
#
#   target/release/chatfleet bench stream & sleep 8; bench/profile.sh 10 target/bench/profile
#
# Needs linux-perf (apt-get install linux-perf). Release builds carry debug info (Cargo.toml).
set -euo pipefail
seconds=${1:-10}
out=${2:-target/bench/profile}
mkdir -p "$out"
pids=()
for name in redis-server "chatfleet gateway" "chatfleet worker"; do
  pid=$(pgrep -n -f "^[^ ]*${name% *}[^ ]* ${name#* }" || pgrep -n -f "^[^ ]*${name}" || true)
  [ -z "$pid" ] && { echo "no process matches '$name'" >&2; continue; }
  tag=${name##* }
  perf record -F 499 -g -p "$pid" -o "$out/$tag.data" -- sleep "$seconds" >/dev/null 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
for f in "$out"/*.data; do
  tag=$(basename "$f" .data)
  perf report -i "$f" --no-children -g none --percent-limit 1.5 --stdio 2>/dev/null | grep -v '^$' | grep -E '^ +[0-9]' | head -25 > "$out/$tag.txt" || true
  echo "== $tag (top self time)"; cat "$out/$tag.txt"
done
