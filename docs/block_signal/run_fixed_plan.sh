#!/bin/bash
# One fixed-plan run: every client trains the same blocks every round, with the convergence study's
# settings on seed 0. Run from a checkout with docs/block_signal/fixed-plan.patch applied
# (git apply docs/block_signal/fixed-plan.patch), e.g.
#   bash docs/block_signal/run_fixed_plan.sh mid-4e-4 4e-4 2,3         # layers 1 and 2 (blocks 2, 3)
#   ZORBA_SPLIT=biases bash docs/block_signal/run_fixed_plan.sh norms-2e-4 2e-4 -1   # norms and biases only
name=$1; lr=$2; only=$3
ZORBA_ONLY=$only HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python -m zorba run --task sst2 --model minilm --clients 8 \
  --rounds 30 --local-steps 5 --batch-size 16 --max-len 64 --train-size 10000 --validation-size 1000 --alpha 0.5 \
  --eval-every 5 --lr-exponent 0.5 --seed 0 --planner all --lr "$lr" --no-measure-memory \
  --out "docs/block_signal/runs/$name" --overwrite > "docs/block_signal/runs/$name.log" 2>&1
