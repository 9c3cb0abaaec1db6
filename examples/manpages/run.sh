#!/usr/bin/env bash
# One-line summaries of Debian manual pages (README.md beside this file): make the data, LoRA-finetune
# SmolLM2-135M-Instruct on the train split, then one `slm eval` table on the test split: the base 135M and
# Qwen2.5-Coder-0.5B prompted with SHOTS examples, and the tuned 135M zero-shot (the prompt it was tuned on).
#
# Sizes (2 CPU cores): the finetune is 100 optimizer steps of 4 packed 512-token windows (205k tokens, 0.35 of
# an epoch of the 2,454 train pages: ~850 of them). Measured in 5-step runs on 1 thread of a shared machine:
# 12-20 s a step (36-65 s when it was busier); on 2 free threads ~12-14 s, so ~20-23 minutes; --max-minutes 25
# stops it on a slower machine (the lr schedule then follows the time). The eval runs 400 test pages through
# 3 models: 0.32, 0.12 and 0.80 items/s on 1 shared thread (3-shot 135M, 3-shot 0.5B, tuned 135M), ~1.5 hours
# in all (less on 2 threads);
# LIMIT=N evaluates a seeded sample of N pages instead.
set -euo pipefail
D=${D:-$HOME/.slmforge/datasets/manpages}   # train/val/test/shots.jsonl (make_data.py)
R=${R:-runs}                                # run directories
OUT=${OUT:-reports/manpages}                # eval.md, eval.json, eval.png, predictions.jsonl
STEPS=${STEPS:-100}
THREADS=${THREADS:-2}
SHOTS=${SHOTS:-3}
LIMIT=${LIMIT:-}
python "$(dirname "$0")/make_data.py" "$D"
slm pull smollm2-135m-instruct
slm pull qwen2.5-coder-0.5b-instruct

# 1. LoRA (r16, all linear layers: the finetune defaults), lr 2e-3 as the best BANKING77 LoRA run
slm finetune smollm2-135m-instruct --data "$D/train.jsonl" --method lora --lr 2e-3 --batch-size 4 \
  --max-steps "$STEPS" --max-minutes 25 --threads "$THREADS" --out "$R/manpages-lora"
slm merge "$R/manpages-lora" --out "$R/manpages-lora-merged" --overwrite  # runs on ONNX Runtime like the bases

# 2. One table: same instruction for all (it is in every prompt), shots drawn (seeded) from the short train
# pages, answers of at most 24 tokens, scored by EM, token F1, ROUGE-L and chrF against the NAME summary
slm eval "smollm2-135m-instruct@${SHOTS}shot" "qwen2.5-coder-0.5b-instruct@${SHOTS}shot" "$R/manpages-lora-merged" \
  --task generation --data "$D/test.jsonl" --shots-from "$D/shots.jsonl" --max-new-tokens 24 \
  ${LIMIT:+--limit "$LIMIT"} --threads "$THREADS" --out "$OUT"
