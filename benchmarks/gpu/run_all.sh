#!/usr/bin/env bash
# One device call runs every GPU check (see docs/performance.md). Needs the carried .gpu/ folder:
# pydantic wheels (absent from the device image) and the embedded model's files (fp16 copy of the
# weights, to fit the transfer limit; speed and memory do not depend on the values).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export ZORBA_DATA_DIR=$PWD/.gpu/data
export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD/src:$PWD/benchmarks
mkdir -p shared && ln -sfn "$PWD/.gpu/data" shared/data  # baselines look for shared/data above them
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" > "$OUT/versions.txt"
timeout 200 python3 benchmarks/gpu/perf.py --device cuda --reps 3 > "$OUT/perf.json" 2> "$OUT/perf.err"
echo "perf rc=$?"
timeout 150 python3 benchmarks/gpu/baselines.py --device cuda --sizes 125m > "$OUT/baselines.json" 2> "$OUT/baselines.err"
echo "baselines rc=$?"
tail -c 3000 "$OUT/perf.json" "$OUT/baselines.json"
