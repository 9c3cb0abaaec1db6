"""The run block every trainer shares (`RunConfig`), and what --resume checks against it; torch-free.

`RunConfig` holds the settings of a run rather than of its recipe: intervals, precision, threads,
device, seed, resume/overwrite and the step and time budget. A trainer's config inherits it
(`@dataclass class PretrainConfig(RunConfig)`), so its fields stay flat keywords beside the recipe's own.
A field whose metadata is `MAY_CHANGE` may differ between a run and its resumption (`slm ... --resume
--max-minutes 30`); every other field must match the saved run's, and `resume_config` says which do not.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from slmforge.core.errors import SlmError
from slmforge.core.fsutil import check_replaceable

MAY_CHANGE = {"resume": "may_change"}
"""Field metadata: the field may differ between a run and its resumption."""
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(kw_only=True)
class RunConfig:
    eval_every: int = field(default=50, metadata=MAY_CHANGE)
    """Steps between val losses (with --val-data)."""
    checkpoint_every: int = field(default=50, metadata=MAY_CHANGE)
    """Steps between checkpoints."""
    log_every: int = field(default=1, metadata=MAY_CHANGE)
    """Steps between log lines."""
    precision: str = "auto"
    """auto (bf16 autocast where the hardware has fast bf16), bf16 or fp32."""
    threads: int | None = field(default=None, metadata=MAY_CHANGE)
    """Torch threads (default: the free cores, never more)."""
    device: str = field(default="auto", metadata=MAY_CHANGE)
    """auto (cuda if available), cpu or cuda."""
    seed: int = 0
    """Seed of the data order (shuffle) and of fresh weights."""
    resume: bool = field(default=False, metadata=MAY_CHANGE)
    """Continue the run in --out from its last checkpoint."""
    overwrite: bool = field(default=False, metadata=MAY_CHANGE)
    """Replace an existing run in --out."""
    max_minutes: float | None = field(default=None, metadata=MAY_CHANGE)
    """Stop after this much training time; the lr schedule then follows time as well as steps."""
    max_steps: int | None = None
    """Optimizer steps to train."""


def open_run(cfg, out: Path, config_file: str = "config.json", what: str = "run", **extra):
    """The config to run with in `out`: on --resume the saved one's (see `resume_config`), else `cfg` once
    `out` is known free (absent, empty, or --overwrite). `extra` are values saved beside the fields."""
    if cfg.resume:
        if not (out / config_file).exists():
            raise SlmError(f"nothing to resume: {out} holds no {what} (drop --resume to start one)")
        return resume_config(cfg, json.loads((out / config_file).read_text()), **extra)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise SlmError(
            f"{out} already holds a run: pass --resume to continue it or --overwrite to start over"
        )
    return cfg


def resume_config(cfg, saved: dict, **extra):
    """`cfg` with the fields left at their defaults taken from `saved` (the run's config); SlmError naming
    every field (or `extra` value) that differs from the saved run's and may not change on resume."""
    defaults = type(cfg)(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if _required(f)})
    for f in dataclasses.fields(cfg):
        if not may_change(f) and getattr(cfg, f.name) == getattr(defaults, f.name):
            cfg = dataclasses.replace(cfg, **{f.name: saved.get(f.name, getattr(cfg, f.name))})
    changed = fixed_changes(saved, cfg, **extra)
    if changed:
        mine = {**dataclasses.asdict(cfg), **extra}
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {mine[k]!r}" for k in changed)
        raise SlmError(f"--resume with a different config ({detail}); use the run's original settings")
    return cfg


def fixed_changes(saved: dict, cfg, **extra) -> list[str]:
    """The fields of `cfg` (and `extra` values) that differ from `saved` and may not change on resume, sorted."""
    mine = {**dataclasses.asdict(cfg), **extra}
    free = {f.name for f in dataclasses.fields(cfg) if may_change(f)}
    return sorted(k for k in mine if k not in free and saved.get(k) != mine[k])


def may_change(f: dataclasses.Field) -> bool:
    return f.metadata.get("resume") == "may_change"


def check_run_block(cfg: RunConfig) -> None:
    """SlmError for an interval below 1, a step or time budget that is not positive, or an unknown precision."""
    for name in ("eval_every", "checkpoint_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise SlmError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise SlmError("--max-steps must be at least 1")
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise SlmError("--max-minutes must be positive")
    if cfg.precision not in PRECISIONS:
        raise SlmError(f"--precision must be auto, bf16 or fp32, not {cfg.precision!r}")


def clear_run_dir(out: Path) -> None:
    """Remove `out` for --overwrite, refusing anything but a run slmforge made (see `check_replaceable`)."""
    check_replaceable(out)
    shutil.rmtree(out)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
