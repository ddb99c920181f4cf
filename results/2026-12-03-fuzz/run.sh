#!/usr/bin/env bash
# The committed fuzz run: each TARGET (default: all) to 10,000,000 executions from its seed
# corpus, one after another, at the lowest CPU priority (the machine was shared). Writes
# <target>.log (libFuzzer's output) and <target>.corpus (files and bytes of the grown corpus)
# into OUT; the grown corpus itself stays there and is not committed.
#
#   results/2026-12-03-fuzz/run.sh OUT [TARGET...]
#
# The committed run was three of these at once (one per lane, on a 2-core machine):
#   run.sh /tmp/fz/run range_conditional signed_link request_head
#   run.sh /tmp/fz/run admin_json basic_auth
#   run.sh /tmp/fz/run zip_layout
set -euo pipefail
out="$(realpath -m "${1:?usage: $0 OUT [TARGET...]}")"
shift
cd "$(dirname "$0")/../../fuzz"
mkdir -p "$out"
runs=10000000
flags=(--sanitizer none)
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
nice -n 19 cargo +nightly fuzz build "${flags[@]}"

for t in "${targets[@]}"; do
    work="$out/corpus-$t"
    rm -rf "$work" && mkdir -p "$work"
    rc=0
    nice -n 19 cargo +nightly fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
        -runs="$runs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$out/$t.log" 2>&1 || rc=$?
    echo "$t rc=$rc files=$(find "$work" -type f | wc -l) bytes=$(find "$work" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')" \
        | tee "$out/$t.corpus"
done
