"""The audit log's spill files: where records go when the database refuses them, until a replay.

`audit-spill.jsonl` (one JSON record per line, fsync'd, mode 0600) takes appends; a replay first renames it
to `audit-spill-<ns>.replaying` (new spills start a fresh file), and reads the records back from there.
Appends and the rename hold a thread lock and an flock on `audit-spill.lock`, so server processes sharing
a workspace never lose each other's records (an append racing a rename would land in a file already
read). What is counted, retried and logged is the writer's business (audit.py); this module only moves
bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

from slmforge.serve.audit_store import AuditRecord, record_of

try:  # POSIX: the spill file is shared by every server process on the workspace
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per workspace
    fcntl = None

SPILL_NAME = "audit-spill.jsonl"


def fsync_dir(path: Path) -> None:
    """fsync a directory (a new or renamed file in it survives a crash); a no-op where that cannot be done."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SpillFiles:
    """The live spill file at `path` and the `.replaying` files moved aside beside it."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def locked(self, timeout: float = -1):
        """The spill files to this thread alone: a thread lock, then an flock shared with other processes
        (a process appending while another renames the file for a replay would lose its records)."""
        if not self.lock.acquire(timeout=timeout):
            raise TimeoutError("the spill file is busy")
        try:
            if fcntl is None:
                yield
                return
            fd = os.open(self.path.with_name(self.path.stem + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if timeout >= 0 else 0))
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise TimeoutError("the spill file is busy") from None
                        time.sleep(0.002)
                yield  # closing the descriptor releases the flock
            finally:
                os.close(fd)
        finally:
            self.lock.release()

    def append(self, data: bytes) -> None:
        """Append `data` (whole lines) to the live file and fsync it; on a failed write the file is cut back
        to its old size. Call within `locked()`."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
            # a crash mid-append can leave a partial last line: never glue a record onto it
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                try:  # a half-written batch would be replayed in part yet counted as dropped
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
        if not size:
            fsync_dir(self.path.parent)

    def replay_files(self) -> list[Path]:
        """The files moved aside for a replay (by this process or an earlier one), oldest first."""
        return sorted(self.path.parent.glob(f"{self.path.stem}-*.replaying"))

    def move_aside(self) -> None:
        """Rename the live file for a replay (new spills start a fresh one). Call within `locked()`."""
        if self.path.exists():
            aside = self.path.with_name(f"{self.path.stem}-{time.time_ns()}.replaying")
            os.replace(self.path, aside)
            fsync_dir(self.path.parent)

    def remove(self, path: Path) -> None:
        """Remove a replayed file (gone already: another process removed it) and fsync the directory."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fsync_dir(path.parent)

    def count(self) -> int:
        """Records in the live file and the files moved aside."""
        n = 0
        for path in [self.path, *self.replay_files()]:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    n += sum(1 for line in f if line.strip())
            except FileNotFoundError:
                pass
        return n


def read_records(path: Path) -> tuple[list[AuditRecord], int] | None:
    """(the records of a spill file, how many of its lines could not be read), or None when the file is
    gone (another server process on this workspace replayed it)."""
    records, bad = [], 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    records.append(record_of(json.loads(line)))
                except (ValueError, TypeError):  # a line torn by a crash mid-append
                    bad += 1
    except FileNotFoundError:
        return None
    return records, bad
