#!/usr/bin/env bash
# Runs README.md's first command exactly as written (its first line that starts with
# `cargo run`): waits for /readyz on the admin listener, checks the Dropbox challenge is echoed,
# then stops the daemon with SIGTERM and requires exit 0. Ports and paths: config.example.toml's.
set -euo pipefail
cd "$(dirname "$0")/.."

command=$(grep -m1 '^cargo run' README.md || true)
if [ -z "$command" ]; then
  echo "README.md has no line starting with \`cargo run\`" >&2
  exit 1
fi
echo "\$ $command"
if [ -e data ]; then
  echo "./data exists already; the check needs a fresh store" >&2
  exit 1
fi
log=$(mktemp)
# `cargo run` execs the daemon in its place, so $! is the daemon once it runs.
bash -c "exec $command" >"$log" 2>&1 &
pid=$!
# Running, not exited (an exited child stays a zombie until `wait`, and kill -0 still finds it).
alive() { [ -r "/proc/$pid/stat" ] && [ "$(awk '{print $3}' "/proc/$pid/stat")" != Z ]; }
cleanup() { kill -9 "$pid" 2>/dev/null || true; rm -rf data; rm -f "$log"; }
trap cleanup EXIT

ready=false
for _ in $(seq 1 1800); do   # the build may come first: up to 15 minutes
  if curl -fsS -o /dev/null http://127.0.0.1:9464/readyz 2>/dev/null; then ready=true; break; fi
  alive || break
  sleep 0.5
done
if ! $ready; then
  echo "the daemon never answered /readyz; its output:" >&2
  cat "$log" >&2
  exit 1
fi
echoed=$(curl -fsS 'http://127.0.0.1:8080/events/dropbox?challenge=first-hour')
if [ "$echoed" != "first-hour" ]; then
  echo "the challenge came back as '$echoed'" >&2
  exit 1
fi
kill -TERM "$pid"
( sleep 30; kill -9 "$pid" 2>/dev/null ) &
timer=$!
status=0
wait "$pid" || status=$?
kill "$timer" 2>/dev/null || true
if [ "$status" -ne 0 ]; then
  echo "the daemon exited $status after SIGTERM; its output:" >&2
  cat "$log" >&2
  exit 1
fi
echo "ok: ready, challenge echoed, exit 0 on SIGTERM"
