"""Does a fine-tuned model stop by itself? Reload it in plain transformers and count.

    python examples/banking77/eos_check.py MODEL_DIR --data data/b77gen/test.jsonl [-n 50]

Loads MODEL_DIR with `AutoModelForCausalLM` / `AutoTokenizer` only (no slmforge code), renders the first
N prompts with the tokenizer's chat template and calls `generate` with the model's own generation config;
the one override is `max_new_tokens` (transformers' default `max_length=20` counts the prompt). A reply
stops at EOS when its last token is one of the generation config's `eos_token_id`s before the cap.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", required=True)
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    rows = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()][: args.n]
    stopped = 0
    for r in rows:
        messages = ([{"role": "system", "content": r["system"]}] if r.get("system") else []) + [
            {"role": "user", "content": r["prompt"]}
        ]
        ids = tok.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=args.max_new_tokens)
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        stopped += bool(new) and new[-1] in eos
    print(json.dumps({"model": args.model, "prompts": len(rows), "stopped_at_eos": stopped,
                      "rate": stopped / max(len(rows), 1), "eos_ids": sorted(eos)}))  # fmt: skip


if __name__ == "__main__":
    main()
