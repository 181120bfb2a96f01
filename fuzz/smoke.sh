#!/usr/bin/env bash
# Runs each fuzz target for a bounded time from its seeds; exits 1 if any input crashed or hung
# one (the inputs are printed as base64, to be added under fuzz/regressions/<target>/).
# Usage: fuzz/smoke.sh SECONDS TARGET...
set -euo pipefail
cd "$(dirname "$0")"
seconds=$1; shift
declare -A seeds=([gguf_reader]=gguf [imatrix_reader]=imatrix [safetensors_reader]=safetensors [quantized_reader]=quantized [arrow_stream]=arrow_stream)
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_QUIET=1
out=$(mktemp -d)
failed=0
for t in "$@"; do
    dict=(); [[ $t == gguf_reader || $t == imatrix_reader ]] && dict=(-x gguf.dict)
    # -t: an input is a hang past 2 s. AFL's own limit (20 ms here) counted two disk stalls of
    # the safetensors target's scratch files as hangs (both replay in under 10 ms); the slowest
    # known input (fuzz/regressions/README.md) takes 1.5 s in the instrumented build.
    cargo afl fuzz -i "seeds/${seeds[$t]}" -o "$out/$t" "${dict[@]}" -t 2000 -V "$seconds" "target/release/$t" >"$out/$t.log" 2>&1 || {
        echo "fuzz $t: afl-fuzz failed:"; tail -20 "$out/$t.log"; failed=1; continue; }
    stats="$out/$t/default/fuzzer_stats"
    execs=$(awk -F: '/^execs_done/ {gsub(/ /, "", $2); print $2}' "$stats")
    found=$(find "$out/$t/default/crashes" "$out/$t/default/hangs" -type f ! -name README.txt 2>/dev/null | wc -l)
    echo "fuzz $t: $execs execs in ${seconds}s, $found crashes/hangs"
    if [ "$found" -gt 0 ]; then
        failed=1
        find "$out/$t/default/crashes" "$out/$t/default/hangs" -type f ! -name README.txt | while read -r f; do
            echo "  $(basename "$f"): $(head -c 4096 "$f" | base64 -w0)"
        done
    fi
done
if [ "$failed" = 0 ] && [ -z "${FUZZ_KEEP:-}" ]; then rm -rf "$out"; else echo "fuzz output kept in $out"; fi
exit $failed
