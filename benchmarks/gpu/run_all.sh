#!/usr/bin/env bash
# One device call runs every GPU check (docs/performance.md, docs/results.md). Needs the carried .gpu/
# folder: wheels absent from the device image (pydantic; datasets + flwr-datasets for the runner's
# partition) and the embedded model's files (fp16 copy of the weights, to fit the transfer limit;
# speed and memory do not depend on the values).
#   1. perf.py: fused-generator bit-equality, step / 2 forwards and replay / normal_, fused vs torch ops
#   2. `zorba profile-memory` on the GPU (per-process peaks)
# PROFILE=0 skips profile-memory; PERF_ARGS adds perf.py options (--skip-memory, --profile, --models ...).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export ZORBA_DATA_DIR=$PWD/.gpu/data
export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD/src:$PWD/benchmarks
mkdir -p shared && ln -sfn "$PWD/.gpu/data" shared/data  # baselines look for shared/data above them
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)"
} > "$OUT/env.txt" 2>&1
timeout "${PERF_S:-240}" python3 benchmarks/gpu/perf.py --device cuda --reps 5 ${PERF_ARGS:-} > "$OUT/perf.json" 2> "$OUT/perf.err"
echo "perf rc=$?"
tail -c 2500 "$OUT/perf.json"
if [ "${PROFILE:-1}" = 1 ]; then
  timeout "${PROFILE_S:-240}" python3 -c "import sys; from zorba.cli.app import main; sys.argv[0] = 'zorba'; main()" \
      profile-memory --model minilm --device cuda --out "$OUT/memory-model-cuda.json" > "$OUT/profile_memory.txt" 2>&1
  echo "profile-memory rc=$?" >> "$OUT/profile_memory.txt"
  tail -n 14 "$OUT/profile_memory.txt"
fi
