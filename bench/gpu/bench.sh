#!/usr/bin/env bash
# `cargo xtask bench-gpu` prepares .gpu/*.gz; then run this on the lent GPU machine (device tool,
# carry [".gpu"]). The seed's model, batch 64, 224², 32 tokens: the PyTorch reference and the Rust
# training step side by side for each precision, with time to first step, ms/step, samples/s and
# (PyTorch) peak memory. Each run has its own time limit so the whole script fits in 8 minutes.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source bench/gpu/unpack.sh
CLIP=${CLIP:-$BIN/clip}   # or $BIN/clip-noautotune, whichever diagnose.sh found faster
LIMIT=${LIMIT:-110}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export CLIP_KERNEL_CACHE=${CLIP_KERNEL_CACHE:-/tmp/clip-kernels}
for p in fp32 bf16-mixed fp16-mixed; do
  timeout 60 python3 crates/clip-model/benches/model_peer.py --device cuda --batch 64 --warmup 3 --steps 10 --mode train --precision "$p" 2>/dev/null | grep '^{' | tee -a "$OUT/results.jsonl"
  t0=$(date +%s)
  timeout "$LIMIT" "$CLIP" bench step --backend cuda --batch 64 --image-size 224 --seq 32 --mode train --warmup 2 --steps 5 --precision "$p" \
    > "$OUT/rust_$p.out" 2> "$OUT/rust_$p.err"
  rc=$?
  if [ $rc -eq 0 ]; then tee -a "$OUT/results.jsonl" < "$OUT/rust_$p.out"; else
    echo "{\"what\": \"train_step\", \"stack\": \"clip (burn 0.21)\", \"precision\": \"$p\", \"result\": \"no step finished within ${LIMIT}s (rc $rc)\", \"wall_s\": $(( $(date +%s) - t0 ))}" | tee -a "$OUT/results.jsonl"
  fi
done
