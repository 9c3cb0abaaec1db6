"""Entity-span data and its scores, shared by every extractor (token classifiers, spaCy, generative models).

A labelled file is JSONL, one `{"text": ..., "entities": [{"start": s, "end": e, "label": L}]}` per line:
character offsets into `text`, `end` exclusive, spans that do not overlap. `read_entities` checks every
row and answers a bad one with a one-line `SlmError` naming the file and line; `span_scores` compares
predicted spans with gold ones (exact offsets and label) per label and micro-averaged, and counts the
records whose spans all match; `overlap_scores` is its lenient twin (overlapping spans of the same label
match), which separates boundary conventions from missed entities.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from slmforge.core.errors import SlmError

LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
"""An entity label: a letter, then letters, digits or `_` (so `B-`/`I-` tags stay unambiguous)."""


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str

    def as_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "label": self.label}


@dataclass
class Record:
    text: str
    spans: list[Span]
    line: int


def read_entities(
    path: str,
    text_field: str = "text",
    entities_field: str = "entities",
    labels: list[str] | None = None,
    encoding: str = "utf-8",
) -> list[Record]:
    """Every record of a span-labelled JSONL file, its spans sorted; one-line errors for bad rows.

    With `labels`, a span of any other label is refused (the set a model was trained on, or a schema's).
    """
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"data file {path} does not exist")
    if p.suffix.lower() not in (".jsonl", ".json"):
        raise SlmError(f"{path}: expected a .jsonl file of {{{text_field!r}, {entities_field!r}}} rows")
    try:
        raw = p.read_text(encoding="utf-8-sig" if encoding.lower() in ("utf-8", "utf8") else encoding)
    except (UnicodeDecodeError, LookupError) as e:
        raise SlmError(f"cannot read {path} as {encoding}: {e}") from None
    known = set(labels) if labels is not None else None
    records = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise SlmError(f"{path}:{i} is not valid JSON") from None
        if not isinstance(obj, dict):
            raise SlmError(f"{path}:{i} is not a JSON object")
        records.append(_record(obj, f"{path}:{i}", i, text_field, entities_field, known))
    if not records:
        raise SlmError(f"{path} holds no examples")
    return records


def _record(obj: dict, where: str, line: int, text_field: str, entities_field: str, known) -> Record:
    text = obj.get(text_field)
    if not isinstance(text, str) or not text.strip():
        raise SlmError(f"{where} has no text in {text_field!r}")
    raw = obj.get(entities_field)
    if not isinstance(raw, list):
        raise SlmError(f"{where} has no list of spans in {entities_field!r} (use [] for none)")
    spans = []
    for e in raw:
        if not isinstance(e, dict) or not {"start", "end", "label"} <= set(e):
            raise SlmError(f"{where}: each span needs start, end and label (got {json.dumps(e)[:80]})")
        start, end, label = e["start"], e["end"], e["label"]
        if any(not isinstance(x, int) or isinstance(x, bool) for x in (start, end)):
            raise SlmError(f"{where}: span offsets must be integers (got {start!r}, {end!r})")
        if not 0 <= start < end <= len(text):
            raise SlmError(
                f"{where}: span [{start}, {end}) is outside the text (length {len(text)}) or empty"
            )
        if not isinstance(label, str) or not LABEL.match(label) or label == "O":
            raise SlmError(f"{where}: label {label!r} is not a name (letters, digits, _; not O)")
        if known is not None and label not in known:
            raise SlmError(f"{where}: unknown label {label!r} (known: {', '.join(sorted(known))})")
        spans.append(Span(start, end, label))
    spans.sort(key=lambda s: (s.start, s.end))
    for a, b in zip(spans, spans[1:]):
        if b.start < a.end:
            raise SlmError(
                f"{where}: spans [{a.start}, {a.end}) {a.label} and [{b.start}, {b.end}) {b.label} overlap"
            )
    return Record(text, spans, line)


def span_scores(gold: list[list[Span]], pred: list[list[Span]], labels: list[str] | None = None) -> dict:
    """Exact-match span scores: a predicted span counts only with the gold span's offsets and label.

    Returns `micro` (precision, recall, f1 and tp/fp/fn over all spans), `per_label` (the same per label,
    with `support` = gold spans), and `exact_match` (share of records whose predicted set equals the gold
    set). With `labels`, spans of other labels are left out on both sides first (a baseline that knows only
    some of the labels is scored on those). Precision with no prediction and recall with no gold span are 0.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold records but {len(pred)} predicted")
    keep = set(labels) if labels is not None else None
    counts: dict[str, list[int]] = {}  # label -> [tp, fp, fn]
    exact = 0
    for g, p in zip(gold, pred):
        gs = {s for s in g if keep is None or s.label in keep}
        ps = {s for s in p if keep is None or s.label in keep}
        exact += gs == ps
        for s in gs | ps:
            c = counts.setdefault(s.label, [0, 0, 0])
            c[0] += s in gs and s in ps
            c[1] += s in ps and s not in gs
            c[2] += s in gs and s not in ps
    for name in labels or []:
        counts.setdefault(name, [0, 0, 0])
    per_label = [{"label": name, **_prf(*counts[name]), "support": counts[name][0] + counts[name][2]}
                 for name in sorted(counts)]  # fmt: skip
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    return {
        "micro": _prf(*totals),
        "per_label": per_label,
        "exact_match": exact / len(gold) if gold else 0.0,
        "records": len(gold),
    }


def overlap_scores(gold: list[list[Span]], pred: list[list[Span]], labels: list[str] | None = None) -> dict:
    """Lenient micro scores, for boundary conventions: a predicted span is right when it overlaps a gold span
    of its label (precision), a gold span is found when a predicted span of its label overlaps it (recall)."""
    keep = set(labels) if labels is not None else None
    right = n_pred = found = n_gold = 0
    for g, p in zip(gold, pred):
        gs = [s for s in g if keep is None or s.label in keep]
        ps = [s for s in p if keep is None or s.label in keep]
        n_pred, n_gold = n_pred + len(ps), n_gold + len(gs)
        right += sum(any(_overlap(a, b) for b in gs) for a in ps)
        found += sum(any(_overlap(a, b) for a in ps) for b in gs)
    precision = right / n_pred if n_pred else 0.0
    recall = found / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _overlap(a: Span, b: Span) -> bool:
    return a.label == b.label and a.start < b.end and b.start < a.end


def _prf(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
