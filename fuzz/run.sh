#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60), seeded from fuzz/seeds/<target>,
# with new inputs kept in fuzz/corpus/<target> (not committed). Needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`); not part of .ci/run. Usage: fuzz/run.sh [SECONDS] [TARGET…]
# Builds into fuzz/target, or $CARGO_TARGET_DIR/fuzz when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "skipped: needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)"
  exit 0
fi
targets=("$@")
target_dir=()
[ -z "${CARGO_TARGET_DIR:-}" ] || target_dir=(--target-dir "$CARGO_TARGET_DIR/fuzz")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  echo "== $target (${seconds}s)"
  cargo +nightly fuzz run "${target_dir[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=1 -rss_limit_mb=256 -print_final_stats=1
done
