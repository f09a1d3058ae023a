#!/usr/bin/env bash
# GPU probe 2 (issue 6): does the seed model's forward pass finish, and do cubecl's on-disk PTX and
# autotune caches make the second process start fast? Forward only, batch 8, 224 px.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
printf '[compilation]\ncache = "local"\n[autotune]\ncache = "local"\n' > cubecl.toml
for run in cold warm; do
  t0=$(date +%s%N)
  timeout ${LIMIT:-140} env CUBECL_AUTOTUNE_LEVEL=minimal ./.gpu/clip bench step --backend cuda --batch 8 --image-size 224 --seq 32 --mode forward --warmup 2 --steps 5 > "$OUT/fwd_$run.out" 2> "$OUT/fwd_$run.err"
  rc=$?; t1=$(date +%s%N)
  echo "$run rc=$rc wall=$(( (t1 - t0) / 1000000000 ))s $(cat "$OUT/fwd_$run.out") $(tail -2 "$OUT/fwd_$run.err" | tr '\n' ' ')"
  du -sh target 2>/dev/null; find . -maxdepth 3 -newer cubecl.toml -type f | grep -v '^./.gpu' | head -5
  LIMIT=90
done
rm -f cubecl.toml
