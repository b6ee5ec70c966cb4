#!/usr/bin/env bash
# Third recipe sweep for the testbed (issue 8), on one H100 through the device tool:
#   bash bench/sweeps/gpu_sweep_3.sh OUT_DIR
# The two best settings of sweep 2 at a budget a 2-core CPU can train in about 6 minutes
# (width 128, 3.5M tokens), both arms, 3 seeds: the world's default documents (8 results each)
# and documents of one statement (2,000 of them).
set -u
OUT=${1:-runs/bench/gpu_sweep_3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
S=/tmp/sweep3
python3 bench/testbed_recipe.py --out $S/final --device cuda --parallel 12 --seeds 0 1 2 \
  --set optimizer=adamw schedule=cosine precision=fp32 tokens=3.5M lr=1e-3 batch=8 width=128 \
  --variant "" --variant "world.results_per_document=1 world.bootstrap_documents=2000" > "$OUT/final.log" 2>&1 &
trap 'cp $S/final/results.jsonl "$OUT/final.jsonl"' EXIT
wait
