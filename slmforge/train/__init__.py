"""The training kit every trainer shares, under public names that know nothing of any one recipe.

run          RunConfig (the run block: intervals, precision, threads, device, seed, resume, budget) and what
             --resume checks against it; torch-free
loop         AdamW with decay groups, lr schedule, time budget, optimizer step, stop flag, trainable weights
checkpoint   atomic, checksummed checkpoints with the RNG states
telemetry    one line per step, progress bar, metrics.jsonl and loss.png
metrics      LM loss / perplexity / bits per byte, training FLOPs per token and peak FLOP/s (MFU)
losses       knowledge-distillation losses (KL at a temperature, top-k, hidden-state cosine)
pretrained   the full-precision causal LM a trainer starts from: loading, checks, generation config
adapters     PEFT adapters and the base they record
"""
