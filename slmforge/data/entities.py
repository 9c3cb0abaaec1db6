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
from dataclasses import dataclass, field
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


# --- generative extraction: a causal LM writes {"LABEL": ["span text", ...], ...} under a schema ---

EXTRACT_SYSTEM = (
    "Extract the entities of the text as JSON, exactly as written, in text order. Types: {labels}."
)
"""The system turn of a generative extractor, at training (`entities_to_sft`) and at extraction alike."""


def extraction_messages(text: str, labels: list[str]) -> list[dict]:
    """The system and user turns a generative extractor is trained and prompted with."""
    return [{"role": "system", "content": EXTRACT_SYSTEM.format(labels=", ".join(labels))},
            {"role": "user", "content": text}]  # fmt: skip


def entity_schema(labels: list[str], max_items: int = 8, max_length: int = 80) -> dict:
    """The JSON schema of a generative extractor's reply: one array of span strings per label, in `labels`'
    order (the order of generation), every label required, nothing else; `max_items` spans per label and
    `max_length` characters per span keep a decode bounded."""
    labels = list(dict.fromkeys(labels))
    if not labels:
        raise SlmError("an entity schema needs at least one label")
    for label in labels:
        if not isinstance(label, str) or not LABEL.match(label) or label == "O":
            raise SlmError(f"entity label {label!r} is not a name (letters, digits, _; not O)")
    if max_items < 1 or max_length < 1:
        raise SlmError("an entity schema needs max_items ≥ 1 and max_length ≥ 1")
    item = {"type": "string", "minLength": 1, "maxLength": max_length}
    return {
        "type": "object",
        "properties": {label: {"type": "array", "items": item, "maxItems": max_items} for label in labels},
        "required": labels,
        "additionalProperties": False,
    }


def schema_labels(schema: dict) -> list[str]:
    """The labels of an entity schema (its properties, in order); a one-line error for anything else."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict) or not props:
        raise SlmError(
            "an entity schema is an object schema with one array property per label; this one has none"
        )
    for label, sub in props.items():
        if not isinstance(sub, dict) or sub.get("type") != "array":
            raise SlmError(f"entity schema property {label!r} is not an array of strings")
    return list(props)


def record_json(record: Record, labels: list[str]) -> str:
    """The reply a generative extractor is trained to write for `record`: span strings per label, text order,
    JSON in one line with ", " and ": " (the layout constrained decoding generates)."""
    out: dict[str, list[str]] = {label: [] for label in labels}
    for s in record.spans:  # sorted by start
        out[s.label].append(record.text[s.start : s.end])
    return json.dumps(out, ensure_ascii=False)


@dataclass
class EntitiesToSftConfig:
    data: str
    """Span-labelled JSONL ({"text", "entities": [{"start", "end", "label"}]} rows)."""
    out: str
    """Chat SFT JSONL to write; the schema goes beside it as OUT.schema.json."""
    labels: list[str] = field(default_factory=list)
    """Labels in schema order, comma-separated (default: the file's, sorted).

    A span of any other label is refused."""
    text_col: str = "text"
    """JSONL key holding the text."""
    entities_col: str = "entities"
    """JSONL key holding the spans."""


def entities_to_sft_cfg(cfg: EntitiesToSftConfig) -> dict:
    """`slm data entities-to-sft`: `entities_to_sft` with the config's fields."""
    return entities_to_sft(cfg.data, cfg.out, cfg.labels or None, cfg.text_col, cfg.entities_col)


def entities_to_sft(
    path: str,
    out: str,
    labels: list[str] | None = None,
    text_field: str = "text",
    entities_field: str = "entities",
) -> dict:
    """Write `out`, chat SFT rows (`{"messages": [system, user, assistant]}`, what `slm finetune` reads) for
    each record of the span-labelled `path`; labels default to the file's, sorted. The schema's JSON is written
    beside it (`out` with `.schema.json`): give it to `slm eval --task extraction --schema` so the prompt and
    the labels at evaluation are the training ones. Returns a summary."""
    records = read_entities(path, text_field, entities_field, labels)
    labels = list(labels) if labels else sorted({s.label for r in records for s in r.spans})
    longest = max((s.end - s.start for r in records for s in r.spans), default=1)
    most = max((sum(s.label == lab for s in r.spans) for r in records for lab in labels), default=1)
    schema = entity_schema(labels, max_items=max(8, 2 * most), max_length=max(80, 2 * longest))
    rows = []
    for r in records:
        messages = extraction_messages(r.text, labels)
        rows.append({"messages": [*messages, {"role": "assistant", "content": record_json(r, labels)}]})
    target = Path(out)
    schema_path = target.with_suffix(".schema.json")
    _write_atomic(target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    _write_atomic(schema_path, json.dumps(schema, ensure_ascii=False, indent=1) + "\n")
    return {"out": str(target), "schema": str(schema_path), "rows": len(rows), "labels": labels,
            "spans": sum(len(r.spans) for r in records)}  # fmt: skip


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def spans_from_strings(text: str, found: dict[str, list[str]], labels: list[str]) -> tuple[list[Span], int]:
    """Map a generative extractor's strings back onto `text`: each string, label by label and left to right,
    takes its first occurrence after the label's previous one that no span already covers (else the first
    free one from the start); a string with no free occurrence is dropped. Returns (spans sorted, dropped)."""
    taken: list[tuple[int, int]] = []
    spans, dropped = [], 0
    for label in labels:
        cursor = 0
        for s in found.get(label, []):
            if not isinstance(s, str) or not s.strip():
                dropped += 1
                continue
            s = s.strip()
            hit = _free_occurrence(text, s, cursor, taken)
            if hit is None and cursor:
                hit = _free_occurrence(text, s, 0, taken)
            if hit is None:
                dropped += 1
                continue
            taken.append((hit, hit + len(s)))
            spans.append(Span(hit, hit + len(s), label))
            cursor = hit + len(s)
    spans.sort(key=lambda x: (x.start, x.end))
    return spans, dropped


def _free_occurrence(text: str, s: str, start: int, taken: list[tuple[int, int]]) -> int | None:
    i = text.find(s, start)
    while i >= 0:
        if all(i + len(s) <= a or i >= b for a, b in taken):
            return i
        i = text.find(s, i + 1)
    return None
