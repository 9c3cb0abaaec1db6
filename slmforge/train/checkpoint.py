"""Atomic, checksummed training checkpoints.

A checkpoint is one `torch.save` file written to a temp path and renamed into `ckpt/`; its sha256 is
then recorded in `ckpt/index.json` (also written atomically). A file that is not in the index, or whose
bytes no longer match its checksum (a torn copy, a truncated disk), is never loaded.

Loading never unpickles code: `torch.load(weights_only=True)` accepts only tensors and plain values
(dicts, lists, tuples, numbers, strings), so a crafted checkpoint that passes the checksum (anyone who
can write the file can rewrite the index) is refused instead of run. The RNG states are stored in that
form too (`rng_state`), which is why checkpoints from before this change, holding pickled numpy
arrays, are refused with a message rather than loaded.
"""

from __future__ import annotations

import json
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_file, sha256_file, write_json

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
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise SlmError(_refusal(path)) from None
    if bad:
        raise SlmError(
            f"every checkpoint in {ckpt_dir} is corrupted ({', '.join(bad)} fail their checksum); "
            "start the run again without --resume"
        )
    return None


def save_training(run_dir: str | Path, step: int, elapsed_s: float, optimizer, **weights) -> Path:
    """A training checkpoint: `weights` (e.g. model=state_dict), the optimizer, step, elapsed time, RNGs."""
    state = {**weights, "optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed_s}
    return save(run_dir, step, {**state, "rng": rng_state()})


def resume_training(run_dir: str | Path, optimizer, load_weights) -> tuple[int, float]:
    """Continue from the newest checkpoint: its weights (`load_weights(state)`), then the optimizer and RNG
    states; (step, elapsed seconds), or (0, 0.0) when the run has none yet."""
    state = load_latest(run_dir)
    if state is None:
        return 0, 0.0
    load_weights(state)
    optimizer.load_state_dict(state["optimizer"])
    restore_rng(state["rng"])
    return state["step"], state["elapsed_s"]


def rng_state() -> dict:
    """The torch, numpy and python RNG states as tensors and plain values, which `load_latest` can load
    without unpickling anything; `restore_rng` puts them back exactly."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n, py = state["numpy"], state["python"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))


def _refusal(path: Path) -> str:
    """Why a checkpoint whose checksum verifies was still refused: it pickles more than tensors and plain
    values. Pickled numpy only means a checkpoint from an older slmforge; anything else is foreign."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) pickle: its globals cannot be listed without running it
        unsafe = []
    if unsafe and all(name.startswith("numpy.") for name in unsafe):
        return (
            f"{path} was written by an older slmforge (its RNG state is pickled numpy), which resume no "
            "longer unpickles; start the run again without --resume"
        )
    named = f" ({', '.join(unsafe[:3])}{', ...' if len(unsafe) > 3 else ''})" if unsafe else ""
    return (
        f"{path} holds pickled objects{named} beyond tensors and plain values, so resume refuses to load "
        "it (it was not written by slmforge, or was tampered with); start the run again without --resume"
    )


def _index(ckpt_dir: Path) -> list[dict]:
    path = ckpt_dir / "index.json"
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SlmError(f"{path} is corrupted ({e.msg}); start the run again without --resume") from e
