#!/usr/bin/env bash
# Data-parallel training on this machine's CPU: one replica, one replica in two micro-batches (the
# same arithmetic as two replicas), two replicas in one process (global and local loss), and two
# nodes of one replica each on loopback; the quickstart model and the seed model (ResNet-50 +
# DistilBERT, 64 px). Per step: the time (median over the steps after the first two) and each
# replica's time inside sums and gathers. One JSON line per run in $OUT/replicas.jsonl.
#
#   bash bench/cpu/replicas.sh          (a release `clip`: cargo build --release -p clip-cli)
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIP=${CLIP:-target/release/clip}
OUT=${OUT:-/tmp/clip-bench-replicas}
STEPS=${STEPS:-12}
SEED_STEPS=${SEED_STEPS:-6}
mkdir -p "$OUT"
results="$OUT/replicas.jsonl"
: > "$results"
echo "{\"date\": \"$(date -u +%FT%TZ)\", \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"cores\": $(nproc)}" | tee -a "$results"

# The seed model on the quickstart data: the quickstart config without its custom towers.
python3 - "$PWD" "$OUT/seed.toml" <<'PY'
import re, sys
root, out = sys.argv[1:]
text = open(f"{root}/configs/quickstart.toml").read().replace('"../', f'"{root}/')
for _ in range(2):
    text = re.sub(r"\n\[model\.(image|text)\]\n(?:[^\[\n].*\n|\n)*", "\n", text)
text = text.replace('image_encoder = "custom"', 'image_encoder = "resnet50"\nimage_embedding = 2048')
text = text.replace('text_encoder = "custom"', 'text_encoder = "distilbert-base-uncased"\ntext_embedding = 768\npretrained = false')
open(out, "w").write(text)
PY

# The median step time and mean exchange time of a run's steps.jsonl, as JSON.
summarize() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, statistics, sys
path, name, model = sys.argv[1:]
steps = [json.loads(l) for l in open(path)]
later = steps[2:] or steps
step_s = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps[1:], steps[2:])] or [steps[0]["elapsed_s"]]
comm = [sum(r["comm_s"] for r in s.get("replicas", [])) / max(len(s.get("replicas", [])), 1) for s in later]
print(json.dumps({"model": model, "run": name, "steps": len(steps),
                  "step_s_median": round(statistics.median(step_s), 3),
                  "comm_s_per_step_mean": round(statistics.mean(comm), 3) if comm else 0.0,
                  "last_loss": steps[-1]["loss"]}))
PY
}

config_of() { if [ "$1" = seed ]; then echo "$OUT/seed.toml"; else echo configs/quickstart.toml; fi; }

run_one() {  # name model args...
  local name=$1 model=$2; shift 2
  local run="$OUT/$model-$name"
  rm -rf "$run"
  "$CLIP" train --plain --backend cpu --config "$(config_of $model)" --run-dir "$run" \
    --set train.val_every_epochs=0 "$@" > "$run.log" 2>&1
  summarize "$run/metrics/steps.jsonl" "$name" "$model" | tee -a "$results"
}

run_nodes() {  # model args...
  local model=$1; shift
  local run="$OUT/$model-2-nodes"
  rm -rf "$run"
  local port=$((29000 + RANDOM % 1000))
  "$CLIP" train --plain --backend cpu --config "$(config_of $model)" --nodes 2 --node-rank 1 \
    --coordinator "127.0.0.1:$port" --set train.val_every_epochs=0 "$@" > "$run-node1.log" 2>&1 &
  "$CLIP" train --plain --backend cpu --config "$(config_of $model)" --run-dir "$run" --nodes 2 \
    --node-rank 0 --coordinator "127.0.0.1:$port" --set train.val_every_epochs=0 "$@" > "$run.log" 2>&1
  wait
  summarize "$run/metrics/steps.jsonl" "2 nodes x 1 replica" "$model" | tee -a "$results"
}

for model in quickstart seed; do
  if [ $model = seed ]; then
    args=(--set data.image_size=64 --set data.batch_size=16 --set model.projection_dim=256 --set data.val_size=0.01 --set train.max_steps=$SEED_STEPS)
  else
    args=(--set train.max_steps=$STEPS)
  fi
  run_one "1 replica" $model "${args[@]}"
  run_one "1 replica, 2 micro-batches" $model "${args[@]}" --set train.micro_batches=2
  run_one "2 replicas" $model "${args[@]}" --devices 0,1
  run_one "2 replicas, local loss" $model "${args[@]}" --devices 0,1 --set train.local_loss=true
  run_nodes $model "${args[@]}"
done
