#!/usr/bin/env bash
# The contributor run of docs/contributors.md: four LoRA adapters on SmolLM2-135M, each trained on
# one task's dev split and scored on the first N items of that task's test split before and after.
# Deterministic (fixed seeds, 1 torch thread): rerunning gives the same adapters and CIDs.
#   scripts/contributor_run.sh [OUT_DIR]      (default ./adapters; DATA_DIR defaults to ~/.mosaic;
#   converted models go to the per-user cache, $MOSAIC_CACHE_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-adapters}
TASKS=${TASKS_DIR:-../shared/data/tasks}
PY=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-$HOME/.mosaic}
STEPS=${STEPS:-30}
# ONLY="arc_challenge medqa" runs a subset (e.g. one lane per task, in parallel).
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
for spec in "gsm8k:15:math,arithmetic:grade-school math word problems, answers boxed" \
            "arc_challenge:20:science,reasoning:grade-school science multiple choice" \
            "medqa:20:medicine,clinical:medical licensing exam multiple choice" \
            "truthfulqa:20:truthfulness,misconceptions:truthful answers to misleading questions"; do
    IFS=: read -r task n tags description <<<"$spec"
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $task "* ]]; then continue; fi
    start=$(date +%s)
    $PY -m node train --data "$TASKS/$task.json" --split dev --name "$task" --out "$OUT/$task" \
        --data-dir "$DATA_DIR" --description "$description" --tags "$tags" \
        --steps "$STEPS" --batch-size 2 --max-length 160 --seed 0 \
        --heldout "$n" --eval-split test --threads 1 --publish --no-progress
    echo "$task: $(( $(date +%s) - start )) s wall"
done
