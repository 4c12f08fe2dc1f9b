#!/usr/bin/env bash
# Builds the binaries and runs the benchmark harness (package hookrelay-bench, bench/src;
# BENCHMARKS.md).
#
#   bench/run.sh                full run: release build, 20-s scenarios, 200,000 queued events,
#                               results in ${CARGO_TARGET_DIR:-target}/bench/results.json
#   bench/run.sh --smoke        CI: debug binaries (`cargo test` already built the daemon), 3-s
#                               scenarios, 2,000 queued events, correctness checks only;
#                               bench/smoke.json
#
# Any other argument goes to hookrelay-bench (see `hookrelay-bench --help`), e.g.
#   bench/run.sh --duration 10 --queued 1000000
# BENCH_PROFILE=release|debug overrides the build profile chosen above.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
for arg in "$@"; do
  [ "$arg" = "--smoke" ] && smoke=true
done
if $smoke; then
  profile="${BENCH_PROFILE:-debug}"
  out_name=smoke.json
  limit=300
else
  profile="${BENCH_PROFILE:-release}"
  out_name=results.json
  limit=3600
fi
build=()
[ "$profile" = "release" ] && build=(--release)

target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
# Both packages of the workspace: the daemon and the harness.
echo "== bench: cargo build ${build[*]} -p hookrelay -p hookrelay-bench --bins"
cargo build --locked "${build[@]}" -p hookrelay -p hookrelay-bench --bins

# Private copies: another build in a shared target dir must not swap a binary mid-run.
bin_dir="$target/bench/bin-$profile"
mkdir -p "$bin_dir"
cp -f "$target/$profile/hookrelay" "$target/$profile/hookrelay-bench" "$bin_dir/"

out="$target/bench/$out_name"
echo "== bench: hookrelay-bench $* (results: $out)"
# The harness bounds every wait itself; this is the last resort. If it is killed, the kernel
# kills the hookrelay it started (setpriv --pdeathsig).
timeout --kill-after=10 "$limit" \
  "$bin_dir/hookrelay-bench" --hookrelay "$bin_dir/hookrelay" --out "$out" "$@"
