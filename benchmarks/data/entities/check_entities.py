"""Check the entity sets: every span valid, the JSONL equal to its sources, train and test kept apart.

    PYTHONPATH=. python3 benchmarks/data/entities/check_entities.py

Per file: each row reads with `slmforge.data.entities.read_entities` (spans inside the text, not empty, not
overlapping, labels of the set), ids unique, spans without surrounding whitespace or a leading lower-case "the", no
sentence twice; the committed JSONL equals what make_entities.py writes from sources/. Per pair (train,
test): no sentence in both, and no near-duplicate: two sentences whose word trigrams, with every entity
replaced by its label, overlap by Jaccard >= 0.5 (a sentence with only its names swapped is the same
sentence). Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE))

from make_entities import BANK, GENERAL, build  # noqa: E402

from slmforge.core.errors import SlmError  # noqa: E402
from slmforge.data.entities import read_entities  # noqa: E402

PAIRS = [("train.jsonl", "test.jsonl", sorted(GENERAL.values())),
         ("bank_train.jsonl", "bank_test.jsonl", sorted(BANK.values()))]  # fmt: skip
NEAR = 0.5
MIN_SIZES = {"train.jsonl": 320, "test.jsonl": 220, "bank_train.jsonl": 150, "bank_test.jsonl": 100}


def masked(text: str, spans) -> str:
    """The sentence with every entity replaced by its label, lower-cased: what a template would share."""
    out, pos = [], 0
    for s in spans:
        out += [text[pos : s.start], f" {s.label} "]
        pos = s.end
    out.append(text[pos:])
    return "".join(out).lower()


def trigrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text)
    return {tuple(words[i : i + 3]) for i in range(max(len(words) - 2, 1))}


def check_file(path: Path, labels: list[str]) -> tuple[list[str], list]:
    problems = []
    try:
        records = read_entities(str(path), labels=labels)
    except SlmError as e:
        return [str(e)], []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [r.get("id") for r in rows]
    if len(set(ids)) != len(ids):
        problems.append(f"{path.name}: ids are not unique")
    seen: dict[str, int] = {}
    for rec in records:
        key = " ".join(rec.text.lower().split())
        if key in seen:
            problems.append(f"{path.name}:{rec.line} repeats line {seen[key]}")
        seen[key] = rec.line
        for s in rec.spans:
            surface = rec.text[s.start : s.end]
            if surface != surface.strip() or surface.startswith("the "):
                problems.append(f"{path.name}:{rec.line}: span {surface!r} has whitespace or a leading 'the'")
    if len(records) < MIN_SIZES.get(path.name, 0):
        problems.append(f"{path.name}: {len(records)} sentences, fewer than {MIN_SIZES[path.name]}")
    return problems, records


def main() -> int:
    problems = []
    for name, content in build().items():
        if (HERE / name).read_text(encoding="utf-8") != content:
            problems.append(f"{name} differs from its source: run make_entities.py")
    for train_name, test_name, labels in PAIRS:
        p1, train = check_file(HERE / train_name, labels)
        p2, test = check_file(HERE / test_name, labels)
        problems += p1 + p2
        grams = [(r, trigrams(masked(r.text, r.spans))) for r in train]
        exact = {" ".join(r.text.lower().split()): r.line for r in train}
        for t in test:
            key = " ".join(t.text.lower().split())
            if key in exact:
                problems.append(f"{test_name}:{t.line} is {train_name}:{exact[key]}")
                continue
            tg = trigrams(masked(t.text, t.spans))
            for r, rg in grams:
                jaccard = len(tg & rg) / len(tg | rg)
                if jaccard >= NEAR:
                    problems.append(
                        f"{test_name}:{t.line} nearly repeats {train_name}:{r.line} (Jaccard {jaccard:.2f})"
                    )
    for p in problems:
        print(p)
    print(f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
