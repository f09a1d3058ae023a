#!/usr/bin/env bash
# GPU probe for issue 6 (run on the lent H200 by the `device` tool, from the repo root):
# the PyTorch peer and the Rust training step side by side, with and without autotuning,
# cold and warm, and cubecl's compile/autotune log summarized. Expects the release binary at
# .gpu/clip (built on the CPU machine: `cargo build --release -p clip-cli`, then stripped).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
BIN=./.gpu/clip
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
nproc
run() { # name timeout cmd...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s%N)
  timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$? t1=$(date +%s%N)
  printf '%-24s rc=%-3s wall=%5ss  %s\n' "$name" "$rc" "$(( (t1 - t0) / 1000000000 ))" "$(grep -h '^{' "$OUT/$name.out" | tr '\n' ' ' | cut -c1-600)"
  tail -c 300 "$OUT/$name.err" | grep -v '^$' | sed 's/^/    err: /' | tail -3
}
STEP="bench step --backend cuda --batch 64 --image-size 224 --seq 32 --mode train"
# 1. The peer, in the same run.
run torch_fp32 90 python3 crates/clip-model/benches/model_peer.py --device cuda --batch 64 --warmup 3 --steps 10 --mode train
# 2. Rust, autotune off as far as cubecl allows (minimal), PTX and autotune caches on disk, cold.
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > cubecl.toml
run rust_minimal_cold 170 env CUBECL_AUTOTUNE_LEVEL=minimal $BIN $STEP --warmup 2 --steps 5
# 3. The same again: caches warm.
run rust_minimal_warm 120 env CUBECL_AUTOTUNE_LEVEL=minimal $BIN $STEP --warmup 2 --steps 5
rm -f cubecl.toml
# 4. Default autotune (balanced), no caches, with cubecl's compile+autotune log, small batch so it can finish.
run rust_balanced_b8_log 120 env CUBECL_DEBUG_LOG=/tmp/cubecl_b8.log $BIN bench step --backend cuda --batch 8 --image-size 224 --seq 32 --mode train --warmup 1 --steps 2
for f in /tmp/cubecl_b8.log; do
  [ -f "$f" ] || continue
  echo "log $f: $(wc -l < "$f") lines, $(wc -c < "$f") bytes"
  grep -o '^[A-Za-z_ -]\{3,30\}' "$f" | sort | uniq -c | sort -rn | head -12
  grep -i -m 20 'autotune\|fastest' "$f" | cut -c1-240
  head -c 200000 "$f" > "$OUT/cubecl_b8_head.log"; tail -c 200000 "$f" > "$OUT/cubecl_b8_tail.log"
done
ls -la "$OUT"
