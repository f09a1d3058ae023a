#!/usr/bin/env bash
# Issue 6, item 2: why the first CUDA training step takes minutes, and which build avoids it.
# One device call of about 7.5 minutes (device tool, carry [".gpu"], after `cargo xtask bench-gpu`).
# The seed's model, batch 64, 224², 32 tokens, Adam. Each run has its own time limit; a run that
# is cut off still leaves its heartbeat lines (kernels compiled so far) and a kernel trace
# ($OUT/<run>.trace.tsv: seconds, source, "Compiling kernel" / "Using PTX cache" / "Tuning <key>")
# from which per-kernel compile times and the autotuned shapes are read.
#   1. the PyTorch reference, fp32 and bf16 autocast (same card, same run)
#   2. clip-noautotune (fusion on, autotune off: one fixed kernel per op)
#   3. clip (fusion + autotune, the default build), fresh kernel cache
#   4. clip again, the cache the third run left (the second-run start-up a user sees)
#   5. clip-plain (no fusion, no autotune)
#   6. clip-noautotune, bf16-mixed
# Results: one JSON line per run in $OUT/results.jsonl (also on stdout), trace summaries in
# $OUT/trace_summaries.jsonl.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu/unpack.sh
S=${SCALE:-1}   # multiply every time limit (e.g. SCALE=2 on a roomier budget)
# Dry run on a CPU machine: BACKEND=cpu BATCH=2 SIZE=32 BIN=<dir with debug builds> PEER=cpu
BACKEND=${BACKEND:-cuda} BATCH=${BATCH:-64} SIZE=${SIZE:-224} PEER=${PEER:-cuda}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"
# Each build gets its own kernel cache (they share element-wise kernels): cold means cold.
KC=/tmp/clip-kernels; rm -rf "$KC"
STEP="bench step --backend $BACKEND --batch $BATCH --image-size $SIZE --seq 32 --mode train --warmup 2 --steps 5 --heartbeat 10"

run() { # name limit_s cmd...
  local name=$1 limit=$(( $2 * S )); shift 2
  local t0=$(date +%s)
  find "$KC" -name '*.lock' -delete 2>/dev/null   # left by a run cut off mid-write (cubecl waits 30 s on one)
  CLIP_KERNEL_TRACE="$OUT/$name.trace.tsv" timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$? wall=$(( $(date +%s) - t0 ))
  local line; line=$(grep -h '^{' "$OUT/$name.out" | tail -1)
  if [ -z "$line" ]; then
    local last; last=$(grep -h 'still running\|first training step' "$OUT/$name.err" | tail -1 | tr -d '"')
    line="{\"run\": \"$name\", \"result\": \"cut off or failed (rc $rc) after ${wall}s\", \"last_heartbeat\": \"$last\"}"
  else
    line="{\"run\": \"$name\", \"wall_s\": $wall, ${line#\{}"
  fi
  echo "$line" | tee -a "$OUT/results.jsonl"
  if [ -s "$OUT/$name.trace.tsv" ]; then
    python3 bench/gpu/trace_summary.py "$OUT/$name.trace.tsv" | tee -a "$OUT/trace_summaries.jsonl"
  fi
}

run torch_fp32 45 python3 crates/clip-model/benches/model_peer.py --device $PEER --batch $BATCH --image $SIZE --warmup 3 --steps 10 --mode train --precision fp32
run torch_bf16 45 python3 crates/clip-model/benches/model_peer.py --device $PEER --batch $BATCH --image $SIZE --warmup 3 --steps 10 --mode train --precision bf16-mixed
CLIP_KERNEL_CACHE=$KC/noautotune run noautotune_fp32 100 "$BIN/clip-noautotune" $STEP --precision fp32
CLIP_KERNEL_CACHE=$KC/default run default_fp32_cold 100 "$BIN/clip" $STEP --precision fp32
ls -laR "$KC" > "$OUT/kernel_cache_listing.txt" 2>&1; du -sh "$KC"/* 2>/dev/null
CLIP_KERNEL_CACHE=$KC/default run default_fp32_warm 50 "$BIN/clip" $STEP --precision fp32
CLIP_KERNEL_CACHE=$KC/plain run plain_fp32 60 "$BIN/clip-plain" $STEP --precision fp32
CLIP_KERNEL_CACHE=$KC/noautotune run noautotune_bf16 50 "$BIN/clip-noautotune" $STEP --precision bf16-mixed
