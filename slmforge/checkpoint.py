"""Atomic, checksummed training checkpoints.

A checkpoint is one `torch.save` file written to a temp path and renamed into `ckpt/`; its sha256 is
then recorded in `ckpt/index.json` (also written atomically). A file that is not in the index, or whose
bytes no longer match its checksum (a torn copy, a truncated disk), is never loaded.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from slmforge.errors import SlmError
from slmforge.fsutil import atomic_file, sha256_file, write_json

KEEP = 2  # checkpoints kept on disk; older ones are deleted once a newer one is recorded


def save(run_dir: str | Path, step: int, state: dict) -> Path:
    ckpt_dir = Path(run_dir) / "ckpt"
    path = ckpt_dir / f"step_{step:08d}.pt"
    with atomic_file(path, "wb") as f:
        torch.save(state, f)
    entries = [e for e in _index(ckpt_dir) if e["step"] != step]
    entries.append({"step": step, "file": path.name, "sha256": sha256_file(path)})
    entries.sort(key=lambda e: e["step"])
    keep, drop = entries[-KEEP:], entries[:-KEEP]
    write_json(ckpt_dir / "index.json", keep)
    for e in drop:
        (ckpt_dir / e["file"]).unlink(missing_ok=True)
    return path


def load_latest(run_dir: str | Path) -> dict | None:
    """The newest checkpoint whose checksum verifies; None if the run has none.

    A corrupted newest checkpoint is reported and skipped in favour of the one before it; if every
    recorded checkpoint is corrupted the run cannot resume and SlmError says so.
    """
    ckpt_dir = Path(run_dir) / "ckpt"
    entries = _index(ckpt_dir)
    bad = []
    for e in reversed(entries):
        path = ckpt_dir / e["file"]
        if not path.exists() or sha256_file(path) != e["sha256"]:
            bad.append(path.name)
            warnings.warn(
                f"checkpoint {path} is missing or corrupted (checksum mismatch); skipping it", stacklevel=2
            )
            continue
        return torch.load(path, map_location="cpu", weights_only=False)
    if bad:
        raise SlmError(
            f"every checkpoint in {ckpt_dir} is corrupted ({', '.join(bad)} fail their checksum); "
            "start the run again without --resume"
        )
    return None


def _index(ckpt_dir: Path) -> list[dict]:
    path = ckpt_dir / "index.json"
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SlmError(f"{path} is corrupted ({e.msg}); start the run again without --resume") from e
