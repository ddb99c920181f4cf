#!/usr/bin/env bash
# Builds weir's fuzz targets and runs each one for N seconds (default 60; the first argument
# overrides it), starting from the committed seed corpus. Fails on any crash, panic, failed
# property, timeout or out-of-memory (cargo fuzz exits non-zero; the input is left under
# fuzz/artifacts/<target>/).
#
#   fuzz/smoke.sh        # 60 s per target
#   fuzz/smoke.sh 5      # 5 s per target
#
# Needs a nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz if missing.
# Set FUZZ_TARGETS="a b" to run only some targets. The grown corpus goes to a temporary
# directory and is thrown away: only the seeds under fuzz/corpus/ are committed.
set -euo pipefail

secs="${1:-60}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi

# No sanitizer: the targets only reach safe Rust (weir's `unsafe` is in the server's I/O paths,
# which no target calls), and libFuzzer's coverage and value profiling work without one.
# Assertions and overflow checks stay on (cargo fuzz's default build).
flags=(--sanitizer none)
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"

echo "== building: $(echo $targets)"
cargo +nightly fuzz build "${flags[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in $targets; do
    echo "== $t: ${secs}s"
    mkdir -p "$work/$t"
    if ! cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log"
        failed+=("$t")
    else
        grep -E '^(#[0-9]+[[:space:]]+DONE|Done [0-9]+ runs|stat::number_of_executed_units)' \
            "$work/$t.log" || tail -n 3 "$work/$t.log"
    fi
done

if ((${#failed[@]})); then
    echo "== FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "== all targets ran ${secs}s without a crash"
