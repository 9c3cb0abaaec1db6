"""BANKING77 as a generative task: customer message in, intent name out (prompt/completion JSONL).

    python examples/banking77/prepare.py [--src ../shared/data/banking77] [--out data/b77gen]

Writes train.jsonl (10,003 rows), test.jsonl (3,080), train_split.jsonl + val.jsonl (a seeded 300-row
validation split of train), train_small.jsonl (--small-per-intent seeded rows of each intent from
train_split: the low-data distillation runs) and labels.json (the 77 intent names). Every row carries the
same short system prompt, so fine-tuning, `slm eval` and the served model see the same conversation. The data stays where
it is licensed (CC-BY-4.0); only derived files are written to --out.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import random
from pathlib import Path

SYSTEM = "Name the banking intent."


def rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return [
            {"system": SYSTEM, "prompt": r["text"], "completion": r["category"]} for r in csv.DictReader(f)
        ]


def write(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")


def per_intent(items: list[dict], n: int) -> list[dict]:
    """A seeded, shuffled sample of n rows of each intent (all of an intent's rows if it has fewer)."""
    by = collections.defaultdict(list)
    for r in items:
        by[r["completion"]].append(r)
    rng = random.Random(0)
    picked = [r for intent in sorted(by) for r in rng.sample(by[intent], min(n, len(by[intent])))]
    rng.shuffle(picked)
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[3] / "shared/data/banking77"))
    ap.add_argument("--out", default="data/b77gen")
    ap.add_argument("--val", type=int, default=300)
    ap.add_argument("--small-per-intent", type=int, default=13)
    args = ap.parse_args()
    src, out = Path(args.src), Path(args.out)
    if not (src / "train.csv").exists():
        raise SystemExit(f"error: {src}/train.csv not found (give --src, the BANKING77 directory)")
    out.mkdir(parents=True, exist_ok=True)
    train, test = rows(src / "train.csv"), rows(src / "test.csv")
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    write(out / "train.jsonl", train)
    write(out / "test.jsonl", test)
    write(out / "val.jsonl", [train[i] for i in order[: args.val]])
    split = [train[i] for i in order[args.val :]]
    write(out / "train_split.jsonl", split)
    write(out / "train_small.jsonl", per_intent(split, args.small_per_intent))
    labels = sorted({r["completion"] for r in train})
    (out / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    print(f"{len(train)} train, {len(test)} test, {len(labels)} intents -> {out}")


if __name__ == "__main__":
    main()
