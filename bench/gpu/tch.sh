#!/usr/bin/env bash
# Issue 18's CUDA table, one device call (≤ 8 minutes): the seed model (ResNet-50 + DistilBERT),
# batch 64, 224², 32 tokens, one training step each way:
#   - the PyTorch peer, fp32 and bf16-mixed;
#   - clip on burn's LibTorch backend (clip-tch), fp32 and bf16-mixed;
#   - clip on burn-cuda without autotune, 1×1 convolutions as matmuls (the default), fp32, run
#     twice: the second pass starts with the kernel cache the first one filled;
# with the time to the first step of each, into $OUT/tch.jsonl and a table $OUT/tch.md.
#
# Prepare here: `cargo xtask bench-gpu --tch` (.gpu/clip-tch.gz, built against the LibTorch of
# the GPU machine's PyTorch, plus .gpu/clip-noautotune.gz), then device tool, carry [".gpu"]:
#   bash bench/gpu/tch.sh
# Dry run on a CPU machine (plumbing only: CPU, tiny batch, short limits):
#   DRY=1 BIN=target/release bash bench/gpu/tch.sh
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -n "${DRY:-}" ]; then
  BIN=${BIN:-target/release}; DEVICE=cpu; BATCH=${BATCH:-2}; IMAGE=${IMAGE:-64}; LIMIT=${LIMIT:-120}
  TCH=${TCH:-$BIN/clip}; CUDA_CLIP=${CUDA_CLIP:-$BIN/clip}; PYTHON=${PYTHON:-python3}
else
  source bench/gpu/unpack.sh
  DEVICE=cuda; BATCH=${BATCH:-64}; IMAGE=${IMAGE:-224}; LIMIT=${LIMIT:-100}
  TCH=$BIN/clip-tch; CUDA_CLIP=$BIN/clip-noautotune; PYTHON=${PYTHON:-python3}
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  # clip-tch links the machine's own LibTorch (that of its PyTorch): find it.
  TORCH_LIB=$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH=$TORCH_LIB:$LD_LIBRARY_PATH
fi
results="$OUT/tch.jsonl"; : > "$results"
step="--batch $BATCH --image-size $IMAGE --seq 32 --mode train --warmup 2 --steps 5 --heartbeat 0"

# One measured command: its JSON line, or a line saying why there is none; the wall time to its
# end (first step + warmup + steps) is added as wall_s.
measure() {  # label, limit, command...
  local label=$1 limit=$2; shift 2
  local t0=$(date +%s%N)
  timeout "$limit" "$@" > "$OUT/$label.out" 2> "$OUT/$label.err"
  local rc=$?
  local wall=$(( ($(date +%s%N) - t0) / 100000000 ))  # tenths of a second
  wall="$((wall / 10)).$((wall % 10))"
  local line=$(grep -m1 '^{' "$OUT/$label.out")
  if [ $rc -eq 0 ] && [ -n "$line" ]; then
    echo "$line" | "$PYTHON" -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(label='$label', wall_s=$wall); print(json.dumps(d))"
  else
    echo "{\"label\": \"$label\", \"result\": \"no step within ${limit}s (rc $rc): $(tail -c 200 "$OUT/$label.err" | tr -d '"\n\\')\", \"wall_s\": $wall}"
  fi | tee -a "$results"
}

for p in fp32 bf16-mixed; do
  measure "pytorch-$p" 60 "$PYTHON" crates/clip-model/benches/model_peer.py --device "$DEVICE" \
    --batch "$BATCH" --image "$IMAGE" --warmup 2 --steps 5 --mode train --precision "$p"
  measure "tch-$p" "$LIMIT" "$TCH" bench step --backend tch $step --precision "$p"
done
export CLIP_KERNEL_CACHE=$OUT/kernels
rm -rf "$CLIP_KERNEL_CACHE"
measure "burn-cuda-cold" $((LIMIT + 50)) "$CUDA_CLIP" bench step --backend "$([ "$DEVICE" = cuda ] && echo cuda || echo cpu)" $step
measure "burn-cuda-warm" "$LIMIT" "$CUDA_CLIP" bench step --backend "$([ "$DEVICE" = cuda ] && echo cuda || echo cpu)" $step

"$PYTHON" - "$results" > "$OUT/tch.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| run | precision | ms/step | samples/s | first step s | wall s | note |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['label']} | {r.get('precision', '')} | {r.get('ms_per_step', '—')} | {r.get('samples_per_s', '—')} "
          f"| {r.get('first_step_s', '—')} | {r.get('wall_s', '')} | {r.get('result', r.get('backend', ''))} |")
PY
cat "$OUT/tch.md"
