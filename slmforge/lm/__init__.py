"""The causal-LM family: configs, trainers and evaluation of generative models.

configs      PretrainConfig, FinetuneConfig, DistillLMConfig, MergeConfig (torch-free; the CLI's options)
ladder       the size ladder: one dial (depth) sets width, heads, lr, batch and token budget
pretrain     `slm pretrain`: from scratch on the ladder, or continued pretraining of any HF causal LM
finetune     `slm finetune`: full, LoRA and prompt-tuning SFT with checkpoints and exact resume
distill      `slm distill` for causal LMs: logit KD and sequence-level KD into a smaller student
merge        `slm merge`: fold a LoRA adapter into its full-precision base
perplexity   held-out loss, perplexity and bits per byte (`slm eval --task perplexity`)
evaluate     `slm eval --task generation|classification|multiple-choice`: quality, latency, memory, cost
eval_data    the examples, shots and prompts evaluation runs on
eval_report  the report: table, eval.md, eval.json, eval.png, predictions.jsonl
"""
