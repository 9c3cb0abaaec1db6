"""The local workspace: a SQLite registry of datasets, tokenizers, runs and models, plus their files.

Each artifact directory also carries a small manifest (`slmforge.json`: kind, source, data hash,
metrics), so an artifact copied elsewhere still says what it is. The workspace lives in
`$SLMFORGE_HOME` (default `~/.slmforge`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from slmforge.core.fsutil import write_json
from slmforge.core.paths import MANIFEST, home  # here for every caller of workspace.home()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    source TEXT,
    data_hash TEXT,
    metrics TEXT NOT NULL DEFAULT '{}'
);
"""


def connect() -> sqlite3.Connection:
    """The workspace registry. It also holds the API keys' hashes and the audit log, so the workspace
    directory is kept 0700 and the database with its WAL and shared-memory files 0600."""
    root = home()
    private_dir(root)
    con = private_sqlite(root / "workspace.db")
    con.execute("PRAGMA journal_mode=WAL")
    _tighten(*_sidecars(root / "workspace.db"))  # created by the line above when the database is new
    con.executescript(_SCHEMA)
    return con


def private_dir(path: Path) -> None:
    """Create `path` 0700, or take group and other access away from an existing one we own."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, mode=0o700)


def private_sqlite(path: Path) -> sqlite3.Connection:
    """Connect to SQLite file `path`, readable by its owner only: created 0600 before SQLite opens it
    (SQLite gives its journal, WAL and shared-memory files the database's mode), and an existing file
    and sidecars left group- or world-readable by an older slmforge tightened to 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    _tighten(path, *_sidecars(path))
    return sqlite3.connect(path, timeout=30)


def _sidecars(db: Path) -> list[Path]:
    return [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _tighten(*paths: Path, mode: int = 0o600) -> None:
    """chmod each existing path we own that grants group or other access; another user's file (a mounted
    volume, a Secret) or a read-only one is left as it is."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    for path in paths:
        try:
            st = path.stat()
            if st.st_mode & 0o077 and uid in (None, st.st_uid):
                path.chmod(mode)
        except OSError:
            continue


@dataclass
class Artifact:
    kind: str
    name: str
    path: str
    created: float
    source: str | None
    data_hash: str | None
    metrics: dict


def register(
    kind: str,
    path: str | Path,
    *,
    name: str | None = None,
    source: str | None = None,
    data_hash: str | None = None,
    metrics: dict | None = None,
) -> Artifact:
    """Record an artifact (replacing any earlier record at the same path) and write its manifest."""
    path = Path(path).resolve()
    art = Artifact(kind, name or path.name, str(path), time.time(), source, data_hash, metrics or {})
    if path.is_dir():
        write_json(
            path / MANIFEST,
            {
                "kind": kind,
                "name": art.name,
                "created": art.created,
                "source": source,
                "data_hash": data_hash,
                "metrics": art.metrics,
            },
        )
    with connect() as con:
        con.execute("DELETE FROM artifacts WHERE path = ?", (art.path,))
        con.execute(
            "INSERT INTO artifacts (kind, name, path, created, source, data_hash, metrics) VALUES (?,?,?,?,?,?,?)",
            (kind, art.name, art.path, art.created, source, data_hash, json.dumps(art.metrics, default=str)),
        )
    return art


def list_artifacts(kind: str | None = None) -> list[Artifact]:
    with connect() as con:
        q = "SELECT kind, name, path, created, source, data_hash, metrics FROM artifacts"
        rows = con.execute(
            q + (" WHERE kind = ?" if kind else "") + " ORDER BY created", (kind,) if kind else ()
        )
        return [Artifact(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]


def missing_artifacts(kind: str | None = None) -> list[Artifact]:
    """Registered artifacts whose path no longer exists."""
    return [a for a in list_artifacts(kind) if not Path(a.path).exists()]


def prune_missing(kind: str | None = None) -> int:
    """Drop the registry rows whose path is gone (never touches files); returns how many were dropped."""
    gone = missing_artifacts(kind)
    with connect() as con:
        for a in gone:
            con.execute("DELETE FROM artifacts WHERE path = ?", (a.path,))
    return len(gone)


def forget_under(root: str | Path) -> int:
    """Drop the registry rows for `root` and everything under it (never touches files): for workflows that
    train intermediate models in a temporary directory; returns how many were dropped."""
    root = str(Path(root).resolve())
    with connect() as con:
        cur = con.execute(
            "DELETE FROM artifacts WHERE path = ? OR substr(path, 1, ?) = ?",
            (root, len(root) + 1, root + "/"),
        )
        return cur.rowcount


def read_manifest(path: str | Path) -> dict:
    p = Path(path) / MANIFEST
    return json.loads(p.read_text()) if p.exists() else {}
