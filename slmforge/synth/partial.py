"""OUT.partial: a run's work so far, so an interrupted run continues where it stopped.

The file is JSON lines. The first holds the run's config (the fields that decide what is written; the
ones that only change speed, `RUN_ONLY`, are left out) and the source's signature; every later line is one
processed unit: its key, its filter counts, the rows it made and its seconds. A unit's rows and its "done"
mark are one line, written (flushed and fsynced) after each teacher batch, so they cannot disagree. A line
torn by a crash is cut off when the file is opened again. A re-run with another config is refused naming
the first field that differs; one whose source changed is refused too. A run holds an exclusive lock on the
file (flock), so a second run of the same command is refused while the first is going.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict
from pathlib import Path

from slmforge.core.errors import SlmError
from slmforge.synth.configs import RUN_ONLY

MARK = "slm synth partial"


def fingerprint(cfg, n: int | None) -> dict:
    """The config fields that decide the rows (with `n` resolved)."""
    fields = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY and k != "out"}
    fields["n"] = n
    return fields


class Partial:
    """The open partial file: `records` holds the units done before this run, in the order they were done."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.records: list[dict] = []
        if path.exists() and path.stat().st_size > 0:
            self._resume(header)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"partial": MARK, **header}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        try:  # one run per partial: two appending to it would interleave their rows
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.close()
            raise SlmError(
                f"another `slm synth` is writing {path}; wait for it to finish (or stop it)"
            ) from None

    def _resume(self, header: dict) -> None:
        _check_unlocked(self.path)
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        try:
            first = json.loads(lines[0])
            if first.get("partial") != MARK:
                raise ValueError
        except ValueError:
            raise SlmError(
                f"{self.path} is not a partial `slm synth` run; move it away or delete it"
            ) from None
        _check(self.path, first, header)
        good = len(lines[0]) + 1
        for line in lines[1:]:
            if not line.strip():
                good += len(line) + 1
                continue
            try:
                record = json.loads(line)
            except ValueError:
                break  # torn by a crash mid-write: everything after it is discarded
            if not isinstance(record, dict) or "key" not in record:
                break
            self.records.append(record)
            good += len(line) + 1
        good = min(good, len(data))
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
                if good and not data[:good].endswith(b"\n"):
                    f.seek(good)
                    f.write(b"\n")

    def append(self, records: list[dict]) -> None:
        """Record units as done (with their rows), durably."""
        for r in records:
            self.f.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())
        self.records += records

    def close(self) -> None:
        self.f.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _check_unlocked(path: Path) -> None:
    """Refuse to read (and cut) a partial file another run holds."""
    with open(path, "rb") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SlmError(
                f"another `slm synth` is writing {path}; wait for it to finish (or stop it)"
            ) from None
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _check(path: Path, old: dict, new: dict) -> None:
    was, now = old.get("config", {}), new["config"]
    for name in now:
        if name in was and was[name] != now[name] or name not in was:
            flag = "--" + name.replace("_", "-")
            raise SlmError(
                f"{path} was started with {flag} {_shown(was.get(name))}, not {_shown(now[name])}: run the "
                f"same command to resume it, or delete {path} to start over"
            )
    if old.get("source") != new["source"]:
        raise SlmError(
            f"the source changed since {path} was started ({_shown(old.get('source'))} then, "
            f"{_shown(new['source'])} now): delete {path} to start over"
        )


def _shown(value) -> str:
    return "(not set)" if value is None else json.dumps(value) if not isinstance(value, str) else value
