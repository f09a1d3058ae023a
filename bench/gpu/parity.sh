#!/usr/bin/env bash
# Correctness on the GPU (issue 6, item 5): the same few training steps of the quickstart's small
# model on Flex (CPU) and on CUDA, same seed, data order and weights, no dropout; the per-step
# losses must agree within a tolerance. Run on the lent GPU machine after `cargo xtask bench-gpu`
# (device tool, carry [".gpu"]); `BACKEND_B=cpu bash bench/gpu/parity.sh` checks the script itself
# on a CPU-only machine. Writes $OUT/parity.json; exit status 1 when the losses disagree.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -z "${CLIP:-}" ]; then source bench/gpu/unpack.sh; CLIP=$BIN/clip; fi
STEPS=${STEPS:-5}
LIMIT=${LIMIT:-240}
BACKEND_B=${BACKEND_B:-cuda}
TOL=${TOL:-2e-3}
WORK=$(mktemp -d)
for side in a:cpu "b:$BACKEND_B"; do
  b=${side#*:}
  t0=$(date +%s)
  timeout "$LIMIT" "$CLIP" train --config configs/quickstart.toml --plain --backend "$b" --run-dir "$WORK/${side%%:*}" \
    --set train.max_steps="$STEPS" --set train.epochs=0 --set model.dropout=0.0 --set checkpoint.every_steps=0 \
    > "$OUT/parity_${side%%:*}_$b.out" 2>&1
  echo "$b: exit $? after $(( $(date +%s) - t0 )) s"
done
python3 - "$WORK/a" "$WORK/b" "$TOL" "$OUT/parity.json" <<'PY'
import json, sys
a_dir, b_dir, tol, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
def losses(d):
    try:
        return [json.loads(l)["loss"] for l in open(f"{d}/metrics/steps.jsonl")]
    except OSError:
        return []
a, b = losses(a_dir), losses(b_dir)
rel = [abs(x - y) / max(abs(x), 1e-6) for x, y in zip(a, b)]
ok = len(a) > 0 and len(a) == len(b) and all(r <= tol for r in rel)
report = {"what": "flex_vs_gpu_losses", "cpu": a, "other": b, "steps": len(a), "max_rel_diff": max(rel, default=None), "tolerance": tol, "agree": ok}
print(json.dumps(report))
json.dump(report, open(out, "w"), indent=1)
sys.exit(0 if ok else 1)
PY
rc=$?
rm -rf "$WORK"
exit $rc
