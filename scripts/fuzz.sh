#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of untrusted input (fuzz/, issue 16) with
# cargo-fuzz and libFuzzer on the stable toolchain (`--sanitizer none`). Each target starts
# from its committed corpus (fuzz/corpus/<target>) and the inputs that once crashed it
# (fuzz/regressions/<target>), then runs each for FUZZ_SECONDS (default 15, wall time on
# one core), two targets at a time. New inputs go to a temporary folder, so the checkout is unchanged;
# a crash fails the run and its input is kept in fuzz/artifacts/<target>/.
#   bash scripts/fuzz.sh [target ...]        FUZZ_SECONDS=600 bash scripts/fuzz.sh tee_request
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$FUZZ_VERSION"; then
  echo "installing cargo-fuzz $FUZZ_VERSION"
  # Unoptimized: it only drives cargo and libFuzzer, and builds in a third of the time.
  cargo install cargo-fuzz --locked --debug --version "$FUZZ_VERSION"
fi

seconds=${FUZZ_SECONDS:-15}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
if [ ${#targets[@]} -eq 0 ]; then
  echo "no fuzz targets found" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The fuzz workspace's lock file is committed: a build that would change it fails.
cp Cargo.lock "$work/Cargo.lock.before"
cargo fuzz build --sanitizer none
if ! cmp -s Cargo.lock "$work/Cargo.lock.before"; then
  echo "fuzz/Cargo.lock changed during the build: commit the new lock file" >&2
  exit 1
fi

run() {
  local t=$1
  mkdir -p "$work/$t" "artifacts/$t"
  local dirs=("$work/$t" "corpus/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  # -timeout: one input running over 10 s is a hang, reported like a crash.
  if cargo fuzz run --sanitizer none "$t" "${dirs[@]}" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$work/$t.log" 2>&1; then
    echo "fuzz $t: $(grep stat::number_of_executed_units "$work/$t.log" | awk "{print \$2}") runs in ${seconds} s, coverage $(grep -E "^#[0-9]+.*DONE" "$work/$t.log" | tail -1 | awk "{print \$4}"), no crash"
  else
    echo "fuzz $t: FAILED" >&2
    tail -40 "$work/$t.log" >&2
    return 1
  fi
}
failed=0
pids=()
for t in "${targets[@]}"; do
  run "$t" & pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
exit $failed
