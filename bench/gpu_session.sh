#!/usr/bin/env bash
# Everything this project ran on a lent GPU machine in one call (one H100/H200, 16 cores), in order:
#   1. bench/gpu.py: the engine and the trainer with a ~100 M Llama against the bf16 peak (issue 13);
#   2. bench/bolt.py --scale full (issue 20): the paper's budget design at the recipe's size (1,000
#      warm-start and 4,000 bootstrap documents, warm start 4 M tokens, M-steps 16 M), three
#      iterations for seeds 0-2 at K = 4 with their K = 1 controls, the oracle ceiling and the raw
#      Token- and FLOP-Match baselines; six runs share the GPU. A second call resumes it.
# Each step has its own time limit, so the collection at the end always runs. Logs and results go to
# $OUT (the device tool brings that folder back); run from the repository root:
#   OUT=/tmp/out bash bench/gpu_session.sh
# Packages missing from the machine's image travel as wheels in .whl/ (see docs/performance.md).
set -u
OUT=${OUT:-runs/gpu_session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/pip.log" 2>&1 || { echo "wheel install failed"; tail -5 "$OUT/pip.log"; }
  export PYTHONPATH=$PWD/src:/tmp/site
else
  export PYTHONPATH=$PWD/src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" \
  | tee -a "$OUT/gpu.txt"
python3 -c "import latent_thoughts.em.loop, latent_thoughts.recipes.testbed" || exit 1

echo "== bench/gpu.py"
timeout "${GPU_LIMIT:-170}" python3 bench/gpu.py --out runs/bench/gpu >"$OUT/gpu.log" 2>&1
grep -v -E "^\{|Writing|Loading" "$OUT/gpu.log" | tail -12

echo "== BoLT at the full scale"
timeout "${SHARED_LIMIT:-400}" python3 bench/bolt.py --scale full --out runs/bench/bolt_gpu --parallel 6 \
  --set estep.batch_chunks=256 estep.batch_tokens=262144 evaluation.batch_size=200 \
  >"$OUT/bolt.log" 2>&1
grep -E "warm start|^\||\] == |total|recovered" "$OUT/bolt.log" | tail -60
tar czf "$OUT/results.tgz" runs/bench/gpu/results.json \
  $(find runs/bench/bolt_gpu -maxdepth 3 -name "*.json" 2>/dev/null) 2>/dev/null
ls -la "$OUT"
