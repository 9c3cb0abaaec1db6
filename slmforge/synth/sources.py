"""What `slm synth` reads: the chunks of an index or an ingested dataset, or the seed examples of an intents
file, and the deterministic sample of them a run works through.

- An index (`slm rag index`): its stored chunks, in id order; quarantined ones (the injection guard's) are
  never used. Provenance: the index as given, the chunk's document, section path and chunk id.
- A dataset (`slm data ingest`: a directory with train.jsonl and val.jsonl, or one such .jsonl file): each
  document is cut by the indexer's own chunker (slmforge.rag.chunking); the chunk id is `DOCID#N` (N
  counting the document's chunks from 0). A dataset has no retrieval index, so qa's retrieval check is
  reported as not run.
- Eligible chunks: at least `min_chunk_chars` long and, for qa, at most `max_code_share` code or tables
  (slmforge.synth.filters.code_share). The sample is the first n of the eligible chunks shuffled by a
  `random.Random(seed)`: a longer run with the same seed starts with the same chunks.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from slmforge.core.errors import SlmError
from slmforge.rag.store import text_sha256
from slmforge.synth.filters import code_share


@dataclass
class Unit:
    """One piece of work for the teacher: a chunk (qa, summaries) or a seed example (intents)."""

    key: str  # unique in the source and stable across runs: what OUT.partial records as done
    text: str
    section: str = ""
    doc: str = ""
    source: dict = field(default_factory=dict)  # the provenance every row made from it carries
    label: str = ""  # intents


@dataclass
class Selection:
    """The units a run works through, and what was left out on the way."""

    kind: str  # index, dataset or seeds
    units: list[Unit]
    available: int  # eligible units in the source
    total: int  # units in the source before the eligibility checks
    skipped: dict[str, int]  # why the others were left out
    signature: dict  # identifies the source's content: a resumed run checks it is unchanged
    seeds: list[Unit] = field(
        default_factory=list
    )  # intents: every seed example (copies are checked against all)


def is_index(cfg) -> bool:
    """Is the source an index (True), a dataset (False)? Neither: a one-line SlmError."""
    from slmforge.rag.store import index_path, is_postgres

    if is_postgres(cfg.store):
        return True
    p = Path(cfg.source).expanduser()
    if p.is_dir():
        if (p / "train.jsonl").is_file():
            return False
        raise SlmError(
            f"{cfg.source} is a directory without train.jsonl: neither an index (`slm rag index`) nor a "
            "dataset (`slm data ingest`)"
        )
    if p.is_file():
        if p.suffix in (".sqlite", ".db"):
            return True
        if p.suffix == ".jsonl":
            return False
        raise SlmError(
            f"{cfg.source} is neither an index (a .sqlite file from `slm rag index`) nor a dataset (a "
            "directory or .jsonl file from `slm data ingest`)"
        )
    try:
        if index_path(cfg.source).is_file():
            return True
    except SlmError:
        pass
    raise SlmError(
        f"{cfg.source} is neither an index (`slm rag index ... --index NAME`) nor a dataset "
        "(`slm data ingest ... -o DIR`): no such index or path"
    )


def select_chunks(cfg, n: int) -> Selection:
    """The chunks a qa or summaries run works through (see the module docstring)."""
    if is_index(cfg):
        chunks, signature = _index_chunks(cfg)
        kind = "index"
    else:
        chunks, signature = _dataset_chunks(cfg)
        kind = "dataset"
    skipped = {"short": 0, "code": 0, "quarantined": 0}
    eligible = []
    for unit, flagged in chunks:
        if flagged:
            skipped["quarantined"] += 1
        elif len(unit.text.strip()) < cfg.min_chunk_chars:
            skipped["short"] += 1
        elif cfg.task == "qa" and code_share(unit.text) > cfg.max_code_share:
            skipped["code"] += 1
        else:
            eligible.append(unit)
    if n > len(eligible):
        why = ", ".join(f"{v} {_SKIP_WORDS[k]}" for k, v in skipped.items() if v)
        raise SlmError(
            f"{cfg.source} has {len(eligible)} usable chunks (of {len(chunks)}{'; ' + why if why else ''}); "
            f"--n {n} asks for more: pass --n {len(eligible)} or fewer"
        )
    order = list(eligible)
    random.Random(cfg.seed).shuffle(order)
    return Selection(kind, order[:n], len(eligible), len(chunks), skipped, signature)


_SKIP_WORDS = {"short": "too short", "code": "mostly code or tables", "quarantined": "quarantined"}


def _index_chunks(cfg) -> tuple[list[tuple[Unit, bool]], dict]:
    from slmforge.rag.stores import open_store

    store = open_store(cfg.source, cfg.store)
    try:
        meta = store.meta()
        found, after = [], 0
        while True:
            batch = store.chunks_to_check(after, 2000, True)
            if not batch:
                break
            after = batch[-1].id
            for c in batch:
                where = {"index": cfg.source, "doc": c.doc, "section": c.section, "chunk_id": c.id,
                         "text_sha256": text_sha256(c.text)}  # fmt: skip
                if c.path != c.doc:
                    where["path"] = c.path
                found.append((Unit(str(c.id), c.text, c.section, c.doc, where), c.flagged))
        signature = {"kind": "index", "chunks": len(found), "max_id": after,
                     "chunking": meta.get("chunking"), "stamp": meta.get("bm25_stamp")}  # fmt: skip
        return found, signature
    finally:
        store.close()


def _dataset_files(source: str) -> list[Path]:
    p = Path(source).expanduser()
    if p.is_file():
        return [p]
    return [f for f in (p / "train.jsonl", p / "val.jsonl") if f.is_file()]


def _dataset_chunks(cfg) -> tuple[list[tuple[Unit, bool]], dict]:
    from slmforge.data.readers import file_format
    from slmforge.rag.chunking import chunk_document

    found, digest = [], hashlib.sha256()
    for f in _dataset_files(cfg.source):
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise SlmError(f"cannot read {f}: {e}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise SlmError(
                    f"{f}:{number} is not valid JSON (a dataset line is {{id, source, text}})"
                ) from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise SlmError(f"{f}:{number} has no text field (a dataset line is {{id, source, text}})")
            digest.update(line.encode())
            doc_id = str(row.get("id") or f"{f.stem}:{number}")
            doc = str(row.get("source") or f"{f}:{number}")
            fmt = file_format(doc.split(":")[0]) or "txt"
            for i, c in enumerate(chunk_document(row["text"], fmt if fmt in ("rst", "md") else "txt")):
                key = f"{doc_id}#{i}"
                where = {"dataset": cfg.source, "doc": doc, "section": c.section, "chunk_id": key,
                         "text_sha256": text_sha256(c.text)}  # fmt: skip
                found.append((Unit(key, c.text, c.section, doc, where), False))
    signature = {"kind": "dataset", "chunks": len(found), "sha256": digest.hexdigest()[:16]}
    return found, signature


def select_seeds(cfg) -> Selection:
    """The seed examples of an intents run: all of them, or `--n` of them sampled under the seed."""
    from slmforge.clf.examples import read_examples

    if not Path(cfg.source).expanduser().is_file():
        raise SlmError(
            f"intents: {cfg.source} is not a file; give a .csv or .jsonl of seed examples (text, label)"
        )
    texts, labels = read_examples(str(Path(cfg.source).expanduser()), cfg.text_col, cfg.label_col)
    seeds = [
        Unit(f"seed-{i}", t, label=y, source={"seed_text": t, "label": y})
        for i, (t, y) in enumerate(zip(texts, labels))
    ]
    n = len(seeds) if cfg.n is None else cfg.n
    if n > len(seeds):
        raise SlmError(
            f"{cfg.source} has {len(seeds)} seed examples; --n {n} asks for more: pass --n {len(seeds)} or fewer"
        )
    order = list(seeds)
    if n < len(seeds):
        random.Random(cfg.seed).shuffle(order)
    digest = hashlib.sha256(json.dumps([[s.text, s.label] for s in seeds]).encode()).hexdigest()[:16]
    signature = {"kind": "seeds", "examples": len(seeds), "sha256": digest}
    return Selection("seeds", order[:n], len(seeds), len(seeds), {}, signature, seeds)


def unanswerable_keys(units: list[Unit], share: float, seed: int) -> set[str]:
    """The round(share x n) units whose question becomes unanswerable: those with the smallest hash of
    (seed, key), so the choice depends on the seed and the units only, never on the order of work."""
    k = round(share * len(units))
    ranked = sorted(units, key=lambda u: hashlib.sha256(f"{seed}:unanswerable:{u.key}".encode()).digest())
    return {u.key for u in ranked[:k]}
