"""`slm data ingest`: files in, a clean, deduplicated, split JSONL dataset out.

Read top to bottom, one streaming pass:

    read (readers) -> normalise (clean) -> drop too short -> drop exact / near duplicates (dedup)
    -> optionally redact PII (slmforge.data.pii) -> assign train/val by content hash -> append to file

Nothing but counters is kept per document (duplicate state lives in a scratch SQLite file inside the
output's temp dir), so memory stays flat however large the corpus. The output directory is written
atomically: `train.jsonl`, `val.jsonl`, `stats.json` appear together, or not at all.

Each output line is `{"id": ..., "source": ..., "text": ...}` where `id` is the first 16 hex digits
of the SHA-1 of the normalised (pre-redaction) text. A document goes to val when
`sha256(f"{seed}:{sha1}")`, read as a fraction of 2**64, is below `val_fraction`: the split depends
only on the document's own content and the seed, never on file order or the rest of the corpus.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir, write_json
from slmforge.data.clean import normalize
from slmforge.data.dedup import Deduper
from slmforge.data.pii import KINDS, redact
from slmforge.data.readers import ReadStats, file_format, iter_documents, iter_files

TRAIN, VAL, STATS = "train.jsonl", "val.jsonl", "stats.json"


@dataclass
class IngestConfig:
    paths: list[str]
    """Files or folders (recursive) of .txt .md .rst .html .jsonl .csv .pdf .docx documents."""
    out: str
    """Output dir: train.jsonl, val.jsonl, stats.json."""
    text_field: str = "text"
    """JSON field with the text in .jsonl files."""
    text_column: str = "text"
    """Column holding the text in .csv files.

    The first row is the header."""
    redact_pii: bool = False
    """Replace emails, phones, card numbers, IBANs with [EMAIL] [PHONE] [CARD] [IBAN]."""
    val_fraction: float = 0.05
    """Share of documents held out for validation, in [0, 1).

    Chosen by content hash."""
    near_dup_threshold: float = 0.8
    """Word 5-gram Jaccard similarity that makes a near duplicate.

    The similarity is estimated (MinHash); at or above this a document is a near duplicate."""
    min_chars: int = 20
    """Drop documents shorter than this after cleaning."""
    seed: int = 0
    """Seed of the content-hash train/val split.

    Another seed gives another (equally deterministic) split."""
    overwrite: bool = False
    """Replace --out if it exists and is not empty."""


def _validate(cfg: IngestConfig) -> None:
    if not cfg.paths:
        raise SlmError("no input paths given")
    for p in cfg.paths:
        if not Path(p).expanduser().exists():
            raise SlmError(f"path not found: {p}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise SlmError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if not 0.0 < cfg.near_dup_threshold <= 1.0:
        raise SlmError(f"--near-dup-threshold must be in (0, 1], got {cfg.near_dup_threshold}")
    if cfg.min_chars < 0:
        raise SlmError(f"--min-chars must be >= 0, got {cfg.min_chars}")
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise SlmError(f"{out} exists and is not a directory")


def _survey(paths: list[str], exclude: list[Path]) -> tuple[int, int]:
    """Number and total size of the readable-looking files, for the progress bar."""
    n = size = 0
    for f in iter_files(paths, exclude=exclude):
        if file_format(f) is not None:
            n += 1
            size += f.stat().st_size
    return n, size


class _Split:
    """Appends records to one output file, counting documents, characters and bytes."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.docs = self.chars = self.bytes = 0

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        self.f.write(line)
        self.docs += 1
        self.chars += len(record["text"])
        self.bytes += len(line)

    def close(self) -> None:
        self.f.close()


def is_val(doc_sha1: str, seed: int, val_fraction: float) -> bool:
    """The split rule: content hash + seed as a number in [0, 1) compared with val_fraction."""
    h = hashlib.sha256(f"{seed}:{doc_sha1}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < val_fraction


def _progress(enabled: bool, total: int, n_files: int):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        TextColumn("{task.fields[files]}/" + str(n_files) + " files"),
        TextColumn("{task.fields[docs]} docs"),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    task = bar.add_task("ingest", total=max(total, 1), files=0, docs=0)
    return bar, task


def ingest(cfg: IngestConfig, progress: bool = True) -> dict:
    """Run the ingest workflow; returns the stats also written to `<out>/stats.json`."""
    t0 = time.perf_counter()
    _validate(cfg)
    out = Path(cfg.out).expanduser()
    n_files, total_bytes = _survey(cfg.paths, exclude=[out])
    rs = ReadStats()
    dropped = {"too_short": 0, "exact": 0, "near": 0}
    pii = dict.fromkeys(KINDS, 0)

    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        train, val = _Split(tmp / TRAIN), _Split(tmp / VAL)
        bar, task = _progress(progress, total_bytes, n_files)
        try:
            with Deduper(tmp / ".dedup.sqlite", threshold=cfg.near_dup_threshold) as dedup, bar:
                docs = iter_documents(
                    cfg.paths, text_field=cfg.text_field, text_column=cfg.text_column, stats=rs, exclude=[out]
                )
                last_files = noted = 0
                for i, doc in enumerate(docs):
                    if rs.files != last_files or i % 256 == 0:
                        last_files = rs.files
                        bar.update(task, completed=rs.bytes, files=rs.files, docs=rs.documents)
                        noted = _print_notes(bar, rs, noted, progress)
                    text = normalize(doc.text)
                    if len(text) < cfg.min_chars:
                        dropped["too_short"] += 1
                        continue
                    dup = dedup.check(text)
                    if dup is not None:
                        dropped[dup] += 1
                        continue
                    sha1 = hashlib.sha1(text.encode("utf-8")).hexdigest()
                    if cfg.redact_pii:
                        text, found = redact(text)
                        for k, v in found.items():
                            pii[k] += v
                    split = val if is_val(sha1, cfg.seed, cfg.val_fraction) else train
                    split.write({"id": sha1[:16], "source": doc.source, "text": text})
                bar.update(task, completed=max(total_bytes, 1), files=rs.files, docs=rs.documents)
                _print_notes(bar, rs, noted, progress)
        finally:
            train.close()
            val.close()

        where = ", ".join(cfg.paths)
        if rs.documents == 0:
            raise SlmError(f"no readable documents under {where}{_skip_note(rs, cfg)}")
        kept = train.docs + val.docs
        if kept == 0:
            raise SlmError(
                f"no documents left under {where}: {rs.documents} read, {dropped['too_short']} shorter "
                f"than --min-chars {cfg.min_chars}, {dropped['exact'] + dropped['near']} duplicates"
            )
        if train.docs == 0 or (cfg.val_fraction > 0 and val.docs == 0):
            empty = "training" if train.docs == 0 else "validation"
            raise SlmError(
                f"corpus too small for a val split: {kept} document{'s' * (kept != 1)} gave 0 for {empty} at "
                f"--val-fraction {cfg.val_fraction} (add documents, change --val-fraction or use 0)"
            )

        h = hashlib.sha256()  # over the bytes of train.jsonl followed by val.jsonl
        for name in (TRAIN, VAL):
            with open(tmp / name, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        stats = {
            "paths": list(cfg.paths),
            "out": str(out.resolve()),
            "files": rs.files,
            "input_bytes": rs.bytes,
            "formats": dict(sorted(rs.by_format.items())),
            "documents_read": rs.documents,
            "skipped": {
                "binary_files": rs.binary,
                "non_utf8_files": rs.non_utf8,
                "unsupported_files": rs.unsupported,
                "malformed_records": rs.malformed,
                "corrupt_or_encrypted_files": rs.corrupt,
                "pdf_pages_without_text": rs.pdf_pages_without_text,
                "too_short": dropped["too_short"],
            },
            "notes": rs.notes,
            "exact_duplicates": dropped["exact"],
            "near_duplicates": dropped["near"],
            "pii_redacted": cfg.redact_pii,
            "pii": pii,
            "train_docs": train.docs,
            "val_docs": val.docs,
            "train_chars": train.chars,
            "val_chars": val.chars,
            "train_bytes": train.bytes,
            "val_bytes": val.bytes,
            "data_hash": h.hexdigest(),
            "elapsed_s": round(time.perf_counter() - t0, 3),
            "config": asdict(cfg),
        }
        write_json(tmp / STATS, stats)

    workspace.register(
        "dataset",
        out,
        source=",".join(cfg.paths),
        data_hash=stats["data_hash"],
        metrics={k: stats[k] for k in ("train_docs", "val_docs", "train_chars", "val_chars",
                                       "documents_read", "exact_duplicates", "near_duplicates")},
    )  # fmt: skip
    return stats


def _print_notes(bar, rs: ReadStats, noted: int, progress: bool) -> int:
    """Print the reader's notes (a pdf/docx skipped or partly read) above the bar; how many are printed."""
    for note in rs.notes[noted:]:
        if progress:
            bar.console.print(note, markup=False, highlight=False, soft_wrap=True)
    return len(rs.notes)


def _skip_note(rs: ReadStats, cfg: IngestConfig) -> str:
    parts = []
    if rs.files == 0 and rs.unsupported == 0:
        return " (no files found)"
    for n, what in (
        (rs.unsupported, "unsupported files"),
        (rs.binary, "binary files"),
        (rs.non_utf8, "non-UTF-8 files"),
        (rs.malformed, "malformed records"),
        (rs.corrupt, "corrupt or encrypted PDF/DOCX files"),
        (rs.pdf_pages_without_text, "PDF pages without text"),
    ):
        if n:
            parts.append(f"{n} {what}")
    if rs.missing_field:
        parts.append(f"{rs.missing_field} jsonl records without field {cfg.text_field!r} (see --text-field)")
    return f" ({', '.join(parts)})" if parts else ""
