#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a fixed time, then prints one line per target.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 60 s, every target)
#
# Environment: SANITIZER (address, the default, or none), CARGO_BUILD_JOBS (default 2),
# FUZZ_ARGS (more libFuzzer flags). Stable Rust works: RUSTC_BOOTSTRAP=1 is set for the build
# only, because cargo-fuzz passes -Z flags (sanitizer, coverage passes) to rustc.
# The working corpus is fuzz/corpus/<target> (seeded from fuzz/seeds/<target>, both read),
# findings go to fuzz/artifacts/<target>/, logs to fuzz/logs/<target>.log. Exit status: 1 when
# any target crashed, hung or ran out of memory.
set -euo pipefail

seconds=${1:-60}
shift || true
cd "$(dirname "$0")"
sanitizer=${SANITIZER:-address}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi

echo "building ${targets[*]} (sanitizer: $sanitizer)" >&2
RUSTC_BOOTSTRAP=1 cargo fuzz build -O --debug-assertions --sanitizer "$sanitizer" >&2
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=target/$triple/release

# Targets that read paths write their inputs here (see src/lib.rs); removed at the end.
base=/dev/shm
[ -d "$base" ] || base=${TMPDIR:-/tmp}
scratch=$(mktemp -d "$base/clip-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export CLIP_FUZZ_SCRATCH=$scratch

mkdir -p logs
failed=0
rows=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
    before=$(ls "artifacts/$t" | wc -l)
    echo "fuzzing $t for ${seconds}s" >&2
    # -timeout: one input taking 10 s is a hang; -malloc_limit_mb: one allocation over 1 GiB
    # (the sign of a size taken from a header) is a finding even when the memory is there.
    set +e
    "$bin_dir/$t" "corpus/$t" "seeds/$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
        -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" ${FUZZ_ARGS:-} > "logs/$t.log" 2>&1
    status=$?
    set -e
    # libFuzzer's final statistics (-print_final_stats, printed after a crash too), and the
    # "Done N runs in S second(s)" line when the time ran out.
    stat() { sed -n "s/^stat::$1: *\([0-9]*\).*/\1/p" "logs/$t.log" | tail -1; }
    runs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    rss=$(stat peak_rss_mb)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "logs/$t.log" | tail -1)
    corpus=$(ls "corpus/$t" | wc -l)
    found=$(( $(ls "artifacts/$t" | wc -l) - before ))
    if [ "$status" -ne 0 ] || [ "$found" -gt 0 ]; then
        failed=1
        what=$(grep -m1 -o 'ERROR: libFuzzer: [a-z-]*\|ERROR: [A-Za-z]*Sanitizer: [a-z -]*\|panicked at [^:]*:[0-9]*' "logs/$t.log" || echo "exit $status")
        result="$found finding(s): $what"
    else
        result="none"
    fi
    rows+=("$(printf '%-12s %12s %8s %6s %8s %8s  %s' "$t" "${runs:-?}" "${rate:-?}" "${secs:-<$seconds}" \
        "$corpus" "${rss:-?}" "$result")")
done

printf '%-12s %12s %8s %6s %8s %8s  %s\n' target runs exec/s secs corpus rss_mb "crashes/hangs/OOMs"
printf '%s\n' "${rows[@]}"
exit $failed
