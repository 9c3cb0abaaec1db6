"""JSON validity and decode speed under a JSON-schema constraint, per engine, against the same engine free.

    nice -n 0 python benchmarks/constrained.py [--model smollm2-135m-instruct] [--prompts 200]
        [--engines torch ort-int8 ort-int4] [--max-new-tokens 96] [--threads 2] [--json out.json]

Each prompt asks for a payment record as JSON (seeded names, amounts, currencies, merchants and dates). On
each engine every prompt is answered greedily one at a time by slmforge's decode loop (`complete`) twice,
back to back so machine noise hits both arms alike: under `Constraint.json_schema(SCHEMA)` (LLGuidance's
token mask at every step), then free for as many tokens as the constrained reply took (a later token costs
more attention, so unequal lengths would bias the ratio). A constrained reply is valid when it parses and
validates against SCHEMA (`jsonschema` when installed, else the same checks by hand). Decode tokens/s is
the tokens after the first over the seconds after the first token, summed over prompts, so prefill does
not decide the ratio. On ORT the free arm takes GenAI's own argmax (no logits copy), the constrained arm
reads the logits and checks them against the mask: the ratio is what a constraint costs a user. The ORT models are converted
once and cached (`slm quantize` makes the same ones); an engine whose backend is not installed is skipped.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "payer": {"type": "string", "maxLength": 40},
        "amount": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "merchant": {"type": "string", "maxLength": 40},
        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
    },
    "required": ["payer", "amount", "currency", "merchant", "date"],
    "additionalProperties": False,
}
ENGINES = {"torch": ("torch", "fp32"), "ort-int8": ("ort", "int8"), "ort-int4": ("ort", "int4")}
NAMES = [
    "Ana Silva",
    "Tom Baker",
    "Li Wei",
    "Sara Novak",
    "Omar Haddad",
    "Eva Klein",
    "John Smith",
    "Mia Rossi",
]
MERCHANTS = ["Tesco", "Amazon", "Shell", "Ikea", "Uber", "Lidl", "Starbucks", "Apple Store", "Zara", "Boots"]
CURRENCIES = [("EUR", "euros"), ("USD", "dollars"), ("GBP", "pounds")]


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        code, word = rng.choice(CURRENCIES)
        date = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        out.append(
            f"{rng.choice(NAMES)} paid {rng.randint(1, 500)}.{rng.randint(0, 99):02d} {word} at "
            f"{rng.choice(MERCHANTS)} on {date}. Write this payment as a JSON object with the keys payer, "
            f"amount, currency ({code}), merchant and date."
        )
    return out


def valid(text: str) -> bool:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return False
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        return jsonschema.Draft202012Validator(SCHEMA).is_valid(obj)
    return (  # the same checks by hand
        isinstance(obj, dict)
        and set(obj) == set(SCHEMA["required"])
        and isinstance(obj["payer"], str)
        and len(obj["payer"]) <= 40
        and type(obj["amount"]) in (int, float)
        and obj["amount"] >= 0
        and obj["currency"] in ("EUR", "USD", "GBP")
        and isinstance(obj["merchant"], str)
        and len(obj["merchant"]) <= 40
        and isinstance(obj["date"], str)
        and re.fullmatch("[0-9]{4}-[0-9]{2}-[0-9]{2}", obj["date"]) is not None
    )


def run_engine(model_dir: Path, engine: str, texts: list[str], args) -> dict:
    from slmforge.core.progress import bar
    from slmforge.infer.constrain import Constraint
    from slmforge.infer.engines import open_lm
    from slmforge.infer.generate import GenerateConfig, complete, prompt_ids

    backend, precision = ENGINES[engine]
    lm = open_lm(str(model_dir), backend, precision, args.threads)
    cfg = GenerateConfig(model=str(model_dir), max_new_tokens=args.max_new_tokens)
    constraint = Constraint.json_schema(SCHEMA)
    ids = [prompt_ids(lm.tokenizer, [{"role": "user", "content": t}]) for t in texts]
    for c in (None, constraint):  # warm-up: first-call costs (and the mask's compile) stay out of the numbers
        complete(lm.step(), lm.tokenizer, ids[0], cfg, lm.eos, None, c)
    totals = {arm: {"tokens": 0, "seconds": 0.0} for arm in ("constrained", "free")}
    valid_n = cut_short = 0
    with bar(f"{engine} prompts", total=len(ids)) as b:
        for p in ids:
            held = complete(lm.step(), lm.tokenizer, p, cfg, lm.eos, None, constraint)
            valid_n += valid(held.text)
            cut_short += held.constraint_satisfied is False
            same_length = GenerateConfig(model=cfg.model, max_new_tokens=max(len(held.token_ids), 2))
            free = complete(lm.step(), lm.tokenizer, p, same_length, lm.eos)
            for arm, done in (("constrained", held), ("free", free)):
                if len(done.token_ids) > 1:
                    totals[arm]["tokens"] += len(done.token_ids) - 1
                    totals[arm]["seconds"] += done.seconds - done.first_token_seconds
            b.advance()
    row = {"engine": engine, "backend": lm.backend, "precision": lm.precision, "prompts": len(ids)}
    row |= {"constrained_valid": valid_n / len(ids), "constrained_cut_short": cut_short}
    for arm, t in totals.items():
        row[f"{arm}_decode_tokens_per_s"] = t["tokens"] / t["seconds"] if t["seconds"] else 0.0
        row[f"{arm}_tokens_mean"] = t["tokens"] / len(ids) + 1
    free = row["free_decode_tokens_per_s"]
    row["speed_ratio"] = row["constrained_decode_tokens_per_s"] / free if free else 0.0
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=None, help="Compute threads (default: the free cores).")
    ap.add_argument("--json", help="Write the rows here.")
    args = ap.parse_args()
    if args.prompts < 1:
        ap.error("--prompts must be at least 1")

    import importlib.util

    from slmforge.core import hub

    model_dir = hub.resolve_model(args.model)
    texts = prompts(args.prompts)
    rows = []
    head = "| engine | prompts | JSON valid | tokens/reply | decode tok/s free | constrained | ratio |"
    print(head + "\n|---|---|---|---|---|---|---|", flush=True)
    for engine in args.engines:  # each row as soon as its engine is done (an ORT conversion may come next)
        if ENGINES[engine][0] == "ort" and importlib.util.find_spec("onnxruntime_genai") is None:
            print(f"{engine}: skipped (onnxruntime-genai is not installed)", file=sys.stderr)
            continue
        started = time.perf_counter()
        r = run_engine(model_dir, engine, texts, args)
        r["wall_s"] = time.perf_counter() - started
        rows.append(r)
        print(
            f"| {r['engine']} | {r['prompts']} | {r['constrained_valid']:.1%} | {r['constrained_tokens_mean']:.1f} | "
            f"{r['free_decode_tokens_per_s']:.1f} | {r['constrained_decode_tokens_per_s']:.1f} | "
            f"{r['speed_ratio']:.2f}x |",
            flush=True,
        )
    for r in rows:
        if r["constrained_cut_short"]:
            print(f"{r['engine']}: {r['constrained_cut_short']} constrained replies hit --max-new-tokens")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
