#!/usr/bin/env bash
# Second recipe sweep for the testbed (issue 8), run on one H100 through the device tool:
#   bash bench/sweeps/gpu_sweep_2.sh OUT_DIR
# After sweep 1 (no setting learned to copy the question's operands): documents of one statement
# (2,000 of them, as many statements as the default world), smaller batches and learning rates.
#   D. two candidates, both arms, seeds 0 and 1;  E. variations, thought arm, seed 0.
set -u
OUT=${1:-runs/bench/gpu_sweep_2}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
S=/tmp/sweep2
ONE="world.results_per_document=1 world.bootstrap_documents=2000"
python3 bench/testbed_recipe.py --out $S/candidates --device cuda --parallel 8 --seeds 0 1 --set optimizer=adamw schedule=cosine precision=fp32 \
  --variant "$ONE tokens=2M" --variant "$ONE tokens=3M lr=1e-3 batch=8 width=128" > "$OUT/candidates.log" 2>&1 &
python3 bench/testbed_recipe.py --out $S/variations --device cuda --parallel 8 --seeds 0 --arms thoughts \
  --set optimizer=adamw schedule=cosine precision=fp32 tokens=3M \
  --variant "$ONE lr=1e-3" --variant "$ONE lr=1e-3 batch=8" --variant "$ONE lr=1e-3 width=128" \
  --variant "$ONE lr=1e-3 batch=8 posterior_probability=0.25" \
  --variant "lr=1e-3 batch=8" --variant "lr=1e-3 batch=8 width=128" \
  --variant "world.results_per_document=2 world.bootstrap_documents=1000 lr=1e-3 batch=8" \
  --variant "$ONE lr=1e-3 tokens=6M" > "$OUT/variations.log" 2>&1 &
trap 'cp $S/candidates/results.jsonl "$OUT/candidates.jsonl"; cp $S/variations/results.jsonl "$OUT/variations.jsonl"' EXIT
wait
