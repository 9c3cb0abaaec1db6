"""Turn the hand-annotated sources (sources/*.txt, inline `[surface|LABEL]` marks) into the JSONL sets.

    python benchmarks/data/entities/make_entities.py

rewrites train.jsonl, test.jsonl, bank_train.jsonl and bank_test.jsonl byte for byte from the sources (no
randomness, no model, standard library only). The sentences and their marks were written by hand; this
script only removes the marks and records each entity as a character span of the plain text.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = re.compile(r"\[([^\[\]|]+)\|([A-Z_]+)\]")
GENERAL = {"PER": "PERSON", "ORG": "ORG", "LOC": "LOCATION", "DATE": "DATE", "MONEY": "MONEY",
           "PROD": "PRODUCT"}  # fmt: skip
BANK = {"AMT": "AMOUNT", "CUR": "CURRENCY", "MER": "MERCHANT", "DATE": "DATE", "CARD": "CARD_TYPE"}
SETS = {  # output file: (source file, id prefix, label abbreviations)
    "train.jsonl": ("train.txt", "train", GENERAL),
    "test.jsonl": ("test.txt", "test", GENERAL),
    "bank_train.jsonl": ("bank_train.txt", "bank-train", BANK),
    "bank_test.jsonl": ("bank_test.txt", "bank-test", BANK),
}


def parse_line(line: str, labels: dict[str, str]) -> tuple[str, list[dict]]:
    """The plain text of one marked-up line and its entity spans (character offsets, end exclusive)."""
    text, entities, pos = [], [], 0
    for m in MARK.finditer(line):
        text.append(line[pos : m.start()])
        start = sum(map(len, text))
        surface, short = m.group(1), m.group(2)
        if short not in labels:
            raise ValueError(f"unknown label {short!r} in: {line}")
        text.append(surface)
        entities.append({"start": start, "end": start + len(surface), "label": labels[short]})
        pos = m.end()
    text.append(line[pos:])
    plain = "".join(text)
    if "[" in plain or "|" in plain:
        raise ValueError(f"a mark is malformed in: {line}")
    return plain, entities


def rows_of(source: Path, prefix: str, labels: dict[str, str]) -> list[dict]:
    """One row per sentence of `source`: `## name` lines set the domain, `#` lines are comments."""
    rows, domain = [], ""
    for line in source.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("## "):
            domain = line[3:].strip()
            continue
        if line.startswith("#"):
            continue
        text, entities = parse_line(line, labels)
        rows.append({"id": f"{prefix}-{len(rows):03d}", "domain": domain, "text": text, "entities": entities})
    return rows


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def build() -> dict[str, str]:
    """Every output file's content, by file name."""
    return {
        name: render(rows_of(HERE / "sources" / src, prefix, labels))
        for name, (src, prefix, labels) in SETS.items()
    }


def main() -> int:
    for name, content in build().items():
        (HERE / name).write_text(content, encoding="utf-8")
        print(f"{name}: {content.count(chr(10))} sentences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
