"""Aggregate generation throughput of continuous batching (`slmforge.infer.batcher`) against one-by-one decoding.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/cbatch.py [--model smollm2-135m-instruct] [--precision int8]
        [--threads 1] [--concurrency 1 4 16] [--waves 2] [--prompt-tokens 64] [--new-tokens 64] [--json out.json]

Prompts are distinct passages of the Python documentation (or seeded sentences when it is not installed), cut to
exactly `--prompt-tokens` tokens, decoded greedily for at most `--new-tokens` tokens (a reply may end earlier at
EOS; both arms decode the same prompts greedily, so they generate the same tokens, which the script checks).

- sequential: `generate.complete` on the ort engine (ONNX Runtime GenAI, its own argmax), one prompt after
  another: generated tokens / wall seconds.
- batched at concurrency c: `ContinuousBatcher(max_batch=c)`, c x `--waves` requests submitted at once, so c
  are in flight and a finished one's slot is taken by the next at once; generated tokens / wall seconds from the
  first submit to the last reply, and first-token latency (queueing included) p50 / max.

Prints tokens/s per arm and each batched arm's ratio to sequential. Both arms use the same model and intra-op
threads; the batcher's prefix cache is on (distinct prompts share only the chat-free start, if anything).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

DOCS = Path("/usr/share/doc/python3.11/html/_sources/library")


def passages(tokenizer, n: int, length: int, seed: int = 0) -> list[list[int]]:
    """`n` distinct token-id prompts of exactly `length` tokens."""
    rng = random.Random(seed)
    texts = []
    if DOCS.is_dir():
        files = sorted(DOCS.glob("*.rst.txt"))
        rng.shuffle(files)
        texts = [f.read_text(errors="ignore")[:4000] for f in files[: n * 2]]
    words = ["the", "cat", "sees", "a", "long", "book", "near", "sea", "every", "day", "with", "care"]
    while len(texts) < n * 2:
        texts.append(" ".join(rng.choice(words) for _ in range(4 * length)))
    out, seen = [], set()
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
        if len(ids) == length and tuple(ids[:8]) not in seen:
            seen.add(tuple(ids[:8]))
            out.append(ids)
        if len(out) == n:
            break
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument(
        "--sequential", type=int, default=4, help="prompts decoded one by one for the baseline"
    )
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from slmforge.infer.batcher import BatcherConfig, ContinuousBatcher
    from slmforge.infer.engines import open_lm
    from slmforge.infer.generate import GenerateConfig, complete

    lm = open_lm(args.model, "ort", args.precision, args.threads)
    cfg = GenerateConfig(model=args.model, max_new_tokens=args.new_tokens)
    most = max(max(args.concurrency) * args.waves, args.sequential)
    prompts = passages(lm.tokenizer, most, args.prompt_tokens)
    if len(prompts) < most:
        print(f"only {len(prompts)} distinct prompts of {args.prompt_tokens} tokens", file=sys.stderr)
        return 1
    complete(
        lm.step(), lm.tokenizer, prompts[0], GenerateConfig(model="", max_new_tokens=4), lm.eos
    )  # warm-up

    reference: dict[int, list[int]] = {}
    started, tokens = time.perf_counter(), 0
    for i in range(args.sequential):
        done = complete(lm.step(), lm.tokenizer, prompts[i], cfg, lm.eos)
        reference[i], tokens = done.token_ids, tokens + len(done.token_ids)
    seconds = time.perf_counter() - started
    sequential = tokens / seconds
    rows = [{"arm": "sequential", "requests": args.sequential, "tokens": tokens, "seconds": round(seconds, 2),
             "tokens_per_s": round(sequential, 1)}]  # fmt: skip
    print(
        f"sequential   {args.sequential:3d} requests {tokens:5d} tokens {seconds:7.2f} s {sequential:7.1f} tok/s"
    )

    for c in args.concurrency:
        n = c * args.waves
        slot = args.prompt_tokens + args.new_tokens
        with ContinuousBatcher(lm, BatcherConfig(max_batch=c, slot_tokens=slot, max_waiting=n)) as batcher:
            batcher.generate(prompts[0], GenerateConfig(model="", max_new_tokens=4))  # warm-up
            started = time.perf_counter()
            requests = [batcher.submit(prompts[i], cfg) for i in range(n)]
            done = [r.result() for r in requests]
            seconds = time.perf_counter() - started
        tokens = sum(len(d.token_ids) for d in done)
        differ = sum(d.token_ids != reference[i] for i, d in enumerate(done) if i in reference)
        firsts = [d.first_token_seconds for d in done]
        rate = tokens / seconds
        row = {"arm": f"batched c={c}", "concurrency": c, "requests": n, "tokens": tokens,
               "seconds": round(seconds, 2), "tokens_per_s": round(rate, 1), "ratio": round(rate / sequential, 2),
               "first_token_p50_s": round(statistics.median(firsts), 3), "first_token_max_s": round(max(firsts), 3),
               "differ_from_sequential": differ}  # fmt: skip
        rows.append(row)
        print(
            f"batched c={c:<3d}{n:3d} requests {tokens:5d} tokens {seconds:7.2f} s {rate:7.1f} tok/s "
            f"x{rate / sequential:.2f}  first token p50 {row['first_token_p50_s']:.2f} s "
            f"max {row['first_token_max_s']:.2f} s  greedy differs from sequential: {differ}"
        )
    if args.json:
        meta = {"model": args.model, "precision": args.precision, "threads": args.threads,
                "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}  # fmt: skip
        args.json.write_text(json.dumps({"config": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
