"""Atomic writes: an artifact is either complete or absent, never half-written.

Replacing a directory (`--overwrite`) removes what was there, so only a directory slmforge made may be
replaced (`check_replaceable`): a manifest-carrying artifact, a run directory, a run's own subdirectory or
a directory inside the workspace; never the filesystem root, a home, the current directory or one of its
parents, whatever they hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from slmforge.core import paths
from slmforge.core.errors import SlmError


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Open a temp file beside `path`; on success fsync and rename it over `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise SlmError(f"could not write {path}: {e.strerror or e}") from e
    except BaseException:
        _unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    if path.exists() and not overwrite and any(path.iterdir()):
        raise SlmError(f"{path} already exists and is not empty (pass --overwrite to replace it)")
    if path.exists():
        check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a finished artifact gets the usual permissions
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SlmError(f"could not write {path}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_RUN_FILES = ("metrics.jsonl", "distill_config.json", "ckpt")  # beside config.json: a training run


def check_replaceable(path: str | Path) -> None:
    """Raise SlmError unless `path` (an existing file or directory) is one slmforge may remove to replace it.

    Never the root, the user's home, the workspace itself, the current directory, or a directory holding
    any of those. Otherwise an empty directory, or one slmforge made: it has the `slmforge.json` manifest,
    it is a run directory (config.json and metrics.jsonl, distill_config.json or ckpt/), its parent is one
    of those (a run's model/ or adapter/), or it lies inside the workspace ($SLMFORGE_HOME)."""
    target = Path(path).resolve()
    shown = Path(path)
    guarded = {
        Path("/").resolve(): "the filesystem root",
        Path.home().resolve(): "your home directory",
        paths.home().resolve(): "the slmforge workspace",
        Path.cwd().resolve(): "the current directory",
    }
    for place, what in guarded.items():
        if target == place or place.is_relative_to(target):
            where = what if target == place else f"a directory holding {what}"
            raise SlmError(f"--out {shown} is {where}; refusing to remove it (choose a new directory)")
    if target.is_dir() and not any(target.iterdir()):
        return
    if target.is_dir() and (_made_by_slmforge(target) or _made_by_slmforge(target.parent)):
        return
    home = paths.home().resolve()
    if target.is_relative_to(home) and not any(home == p for p in guarded if p != home):
        return
    raise SlmError(f"--out {shown} exists and is not an slmforge artifact; remove it yourself")


def _made_by_slmforge(d: Path) -> bool:
    if (d / paths.MANIFEST).is_file():
        return True
    return (d / "config.json").is_file() and any((d / name).exists() for name in _RUN_FILES)


def write_json(path: str | Path, obj) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _unlink(p: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p)
