#!/usr/bin/env bash
# The seed model's training step and the Fashion-MNIST recipe's throughput on this machine's CPU,
# three stacks side by side in one run: clip on burn Flex, clip on burn's LibTorch backend, and
# the PyTorch peer. One JSON line per measurement in $OUT/backends.jsonl.
#
# Needs: a release `clip` built with `--features tch` (after `cargo xtask libtorch`), a Python
# with torch, timm, transformers and pillow ($PYTHON), and for the recipe
# `cargo xtask fetch-assets --only minilm,fashion-mnist`. Run it on an otherwise idle machine.
#
#   PYTHON=/path/to/venv/bin/python bash bench/cpu/backends.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIP=${CLIP:-target/release/clip}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/clip-bench-backends}
STEPS=${STEPS:-3}
RECIPE_STEPS=${RECIPE_STEPS:-40}
mkdir -p "$OUT"
results="$OUT/backends.jsonl"
: > "$results"
echo "{\"date\": \"$(date -u +%FT%TZ)\", \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"cores\": $(nproc)}" | tee -a "$results"

# 1. The seed model (ResNet-50 + DistilBERT), one training step: forward, backward, Adam.
for shape in "8 224" "16 224" "16 64"; do
  set -- $shape
  for backend in cpu tch; do
    "$CLIP" bench step --backend "$backend" --batch "$1" --image-size "$2" --mode train \
      --warmup 1 --steps "$STEPS" --heartbeat 0 2>/dev/null | grep '^{' | tee -a "$results"
  done
  "$PYTHON" crates/clip-model/benches/model_peer.py --device cpu --batch "$1" --image "$2" \
    --mode train --warmup 1 --steps "$STEPS" | grep '^{' | tee -a "$results"
done

# 2. The Fashion-MNIST recipe (configs/fashion-mnist-minilm.toml): training pairs per second,
#    the median over steps 6..RECIPE_STEPS (the first steps warm caches and allocators).
if [ -d datasets/fashion-mnist ]; then
  for backend in cpu tch; do
    run="$OUT/fashion-$backend"
    rm -rf "$run"
    "$CLIP" train --plain --backend "$backend" --config configs/fashion-mnist-minilm.toml \
      --run-dir "$run" --set "train.max_steps=$RECIPE_STEPS" --set train.val_every_epochs=0 \
      > "$OUT/fashion-$backend.log" 2>&1
    "$PYTHON" - "$run/metrics/steps.jsonl" "$backend" <<'PY' | tee -a "$results"
import json, statistics, sys
rates = [json.loads(l)["samples_per_s"] for l in open(sys.argv[1])][5:]
print(json.dumps({"what": "fashion_mnist_pairs_per_s", "stack": "clip (burn 0.21)",
                  "backend": sys.argv[2], "steps": len(rates), "pairs_per_s": round(statistics.median(rates), 1)}))
PY
  done
  "$PYTHON" crates/clip-train/benches/fashion_mnist_peer.py . 1 | grep '^{' | tee "$OUT/fashion-peer.jsonl" |
    "$PYTHON" -c 'import json,sys
for l in sys.stdin:
    d = json.loads(l)
    if "epoch" in d:
        print(json.dumps({"what": "fashion_mnist_pairs_per_s", "stack": "pytorch", "epochs": 1, "pairs_per_s": d["samples_per_s"]}))' | tee -a "$results"
else
  echo "datasets/fashion-mnist missing: cargo xtask fetch-assets --only minilm,fashion-mnist" >&2
fi
