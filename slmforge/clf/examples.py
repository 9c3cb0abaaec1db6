"""Labelled examples for the classifier family: read a .csv / .tsv / .jsonl file, check its labels, split it.

Every bad input is a one-line `SlmError` that names the file and line and says what to pass instead.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
import re
from pathlib import Path

from slmforge.core.errors import SlmError

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
OOS = "oos"
"""The reserved label `predict` answers below the calibrated confidence threshold (`--oos`)."""


def read_examples(path: str, text_col: str, label_col: str, encoding: str = "utf-8") -> tuple[list, list]:
    """(texts, labels) from a .csv with a header row or a .jsonl file; one-line errors for bad input."""
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"data file {path} does not exist")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SlmError(f"unknown encoding {encoding!r} (try utf-8, utf-8-sig, latin-1, cp1252)") from None
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # tolerate a byte-order mark
    try:
        raw = p.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise SlmError(
            f"{path} is not valid {encoding.removesuffix('-sig')} (byte {e.start}); "
            "pass --encoding with the file's encoding, e.g. latin-1 or cp1252"
        ) from None
    if p.suffix.lower() in (".jsonl", ".json"):
        rows, columns = [], set()
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise SlmError(f"{path}:{i} is not valid JSON") from None
            if not isinstance(obj, dict):
                raise SlmError(f"{path}:{i} is not a JSON object")
            columns |= set(obj)
            rows.append((i, obj))
        found = sorted(columns)
    elif p.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(
            io.StringIO(raw, newline=""), delimiter="\t" if p.suffix.lower() == ".tsv" else ","
        )
        found = list(reader.fieldnames or [])
        rows = [(i, r) for i, r in enumerate(reader, 2)]
    else:
        raise SlmError(f"{path}: expected a .csv, .tsv or .jsonl file")
    missing = [c for c in (text_col, label_col) if c not in found]
    if missing:
        raise SlmError(
            f"{path} has no column {', '.join(map(repr, missing))}; columns found: "
            f"{', '.join(found) or 'none'} (set --text-col / --label-col)"
        )
    texts, labels = [], []
    for line, r in rows:
        text, label = r.get(text_col), r.get(label_col)
        if text is None or not str(text).strip():
            raise SlmError(f"{path}:{line} has an empty {text_col!r}")
        if label is None or not str(label).strip():
            raise SlmError(f"{path}:{line} has an empty {label_col!r}")
        texts.append(str(text).strip())
        labels.append(str(label).strip())
    if not texts:
        raise SlmError(f"{path} holds no examples")
    return texts, labels


def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per label, hold out round(fraction * n) examples (at least one when fraction > 0 and n ≥ 2)."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    train, val = [], []
    for members in by_label.values():
        members = members[:]
        rng.shuffle(members)
        k = round(fraction * len(members))
        if fraction > 0 and len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        val += members[:k]
        train += members[k:]
    return sorted(train), sorted(val)


def check_labels(labels: list[str], min_per_class: int, path: str) -> list[str]:
    """The sorted label names, after checking there are two or more, not one per text, all of one kind
    (numbers or words), none reserved and none too rare."""
    counts: dict[str, int] = {}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    if len(counts) < 2:
        raise SlmError(f"{path} has only one label ({next(iter(counts))!r}); a classifier needs at least two")
    if len(counts) == len(labels) and len(labels) > 2:
        raise SlmError(
            f"every one of the {len(labels)} labels in {path} is different (e.g. {preview(labels, 2)}): "
            "is the label column the text? (set --label-col / --text-col)"
        )
    numbers = [y for y in counts if _NUMBER.fullmatch(y)]
    if numbers and len(numbers) < len(counts):
        words = [y for y in counts if not _NUMBER.fullmatch(y)]
        raise SlmError(
            f"the labels in {path} mix numbers ({preview(sorted(numbers), 2)}) and words "
            f"({preview(sorted(words), 2)}): is it the label column, or are some rows shifted? "
            "(make every label a word, or every label a number)"
        )
    if OOS in counts:
        raise SlmError(f"{path} uses the reserved label {OOS!r}; rename it (oos is what --oos predicts)")
    rare = sorted(k for k, v in counts.items() if v < min_per_class)
    if rare:
        raise SlmError(
            f"{len(rare)} labels have fewer than {min_per_class} examples ({preview(rare)}); "
            "add examples, drop them, or lower --min-per-class"
        )
    return sorted(counts)


def preview(items: list[str], n: int = 5) -> str:
    """The first `n` items quoted, and how many more: for error messages that name offending labels."""
    shown = ", ".join(map(repr, items[:n]))
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")
