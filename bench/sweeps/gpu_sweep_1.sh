#!/usr/bin/env bash
# First recipe sweep for the testbed (issue 8), run on one H100 through the device tool:
#   bash bench/sweeps/gpu_sweep_1.sh OUT_DIR
# Three sweeps at once on one GPU (training on CUDA in fp32, as on an AVX2 CPU; evaluation on CUDA):
#   A. the training budget, both arms;  B. one option at a time at 2M tokens, thought arm only;
#   C. trainer vs plain loop over 3 seeds at the 6M-token point.
# Results: OUT_DIR/{budget,options}.jsonl, OUT_DIR/dynamics.json; docs/testbed.md summarises them.
set -u
OUT=${1:-runs/bench/gpu_sweep_1}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
S=/tmp/sweep1
python3 bench/testbed_recipe.py --out $S/budget --device cuda --parallel 5 --seeds 0 1 --set optimizer=adamw schedule=cosine precision=fp32 \
  --variant tokens=1M --variant tokens=2M --variant tokens=4M --variant tokens=8M > "$OUT/budget.log" 2>&1 &
python3 bench/testbed_recipe.py --out $S/options --device cuda --parallel 7 --seeds 0 1 --arms thoughts \
  --set optimizer=adamw schedule=cosine precision=fp32 tokens=2M \
  --variant lr=1e-3 --variant lr=4e-3 --variant batch=8 --variant batch=32 --variant "batch=8 lr=1e-3" \
  --variant width=128 --variant width=256 --variant layers=2 --variant layers=8 \
  --variant posterior_probability=0.25 --variant posterior_probability=0.0 \
  --variant world.bootstrap_documents=1000 --variant world.bootstrap_documents=4000 \
  --variant split_digits=false --variant seq_len=128 --variant world.continuation_rate=0 > "$OUT/options.log" 2>&1 &
python3 bench/trainer_dynamics.py --out $S/dynamics --device cuda --parallel 3 --seeds 0 1 2 \
  --set tokens=6M batch=32 precision=fp32 > "$OUT/dynamics.log" 2>&1 &
trap 'cp $S/budget/results.jsonl "$OUT/budget.jsonl"; cp $S/options/results.jsonl "$OUT/options.jsonl"; cp $S/dynamics/results.json $S/dynamics/loss_curves.png "$OUT/" 2>/dev/null' EXIT
wait
