"""API keys: `slm-` + 32 random bytes, shown once, stored as their SHA-256 in the workspace database.

Keys live in the workspace database, or in the file `$SLMFORGE_KEYS_DB` names (see `connect`).
A key has a name (what the audit log records; the secret itself is never stored or logged), scopes, an
optional expiry and an optional rate limit of its own. A scope is `*`, an endpoint family (`chat`,
`completions`, `embeddings`, `classify`, `rag`, `pipelines`, `models`, `metrics`) or an endpoint family
and one model or pipeline: `classify:intents`, `pipelines:bank`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.serve.config import ENDPOINTS

PREFIX = "slm-"

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    rate_per_minute INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_name ON api_keys (name);
"""


@dataclass
class ApiKey:
    name: str
    scopes: list[str]
    created: float
    expires: float | None = None
    revoked: float | None = None
    rate_per_minute: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None and (self.expires is None or self.expires > time.time())

    def allows(self, endpoint: str, model: str | None = None) -> bool:
        """Whether the key may call `endpoint` (and, when given, use `model` there)."""
        for s in self.scopes:
            if s == "*" or s == endpoint:
                return True
            if model is None:
                if s.startswith(endpoint + ":"):  # some model on this endpoint: the model is checked later
                    return True
            elif s == f"{endpoint}:{model}":
                return True
        return False


def connect() -> sqlite3.Connection:
    """The keys table: in the workspace database, or in the SQLite file `$SLMFORGE_KEYS_DB` names (shared by
    several replicas; opened read-only when the file is not writable, e.g. mounted from a Kubernetes Secret)."""
    path = os.environ.get("SLMFORGE_KEYS_DB")
    if not path:
        con = workspace.connect()
    elif Path(path).exists() and not os.access(path, os.W_OK):
        return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    else:
        con = workspace.private_sqlite(Path(path))  # key hashes: owner-only, as in the workspace
    con.executescript(SCHEMA)
    return con


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_key(
    name: str, scopes: list[str], expires: str | None = None, rate_per_minute: int | None = None
) -> tuple[str, ApiKey]:
    """A new key: (the secret, shown once; its record)."""
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name or ""):
        raise SlmError(f"a key name is 1-64 letters, digits or _.@- (got {name!r})")
    scopes = check_scopes(scopes)
    until = parse_expiry(expires) if expires else None
    if rate_per_minute is not None and rate_per_minute < 1:
        raise SlmError(f"--rate must be at least 1 request per minute (got {rate_per_minute})")
    secret = PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name, scopes, time.time(), until, None, rate_per_minute)
    with _writing(), connect() as con:
        if any(k.active for k in _rows(con, "WHERE name = ?", (name,))):
            raise SlmError(f"an active key named {name!r} exists; revoke it first or pick another name")
        con.execute(
            "INSERT INTO api_keys (name, hash, scopes, created, expires, rate_per_minute) VALUES (?,?,?,?,?,?)",
            (name, hash_key(secret), " ".join(scopes), key.created, until, rate_per_minute),
        )
    return secret, key


def list_keys(include_inactive: bool = True) -> list[ApiKey]:
    with connect() as con:
        keys = _rows(con, "ORDER BY created", ())
    return keys if include_inactive else [k for k in keys if k.active]


def revoke_key(name: str) -> int:
    """Revoke the active keys named `name`; return how many."""
    with _writing(), connect() as con:
        n = con.execute(
            "UPDATE api_keys SET revoked = ? WHERE name = ? AND revoked IS NULL", (time.time(), name)
        ).rowcount
    if n == 0:
        raise SlmError(f"no unrevoked key named {name!r} (`slm keys list` shows them)")
    return n


class KeyStore:
    """Looks presented secrets up by hash, one connection per thread (reads are ~50 µs in WAL mode), so a
    revocation takes effect on the next request. A `$SLMFORGE_KEYS_DB` file that is replaced (a Kubernetes
    Secret update swaps it) is reopened on the next request."""

    def __init__(self):
        import threading

        self._local = threading.local()
        connect().close()  # create the table

    def lookup(self, secret: str) -> ApiKey | None:
        if not secret.startswith(PREFIX) or len(secret) > 128:
            return None
        stamp = _file_stamp()
        con = getattr(self._local, "con", None)
        if con is None or self._local.stamp != stamp:
            if con is not None:
                con.close()
            con = self._local.con = connect()
            self._local.stamp = stamp
        rows = _rows(con, "WHERE hash = ?", (hash_key(secret),))
        return rows[0] if rows else None


def _file_stamp() -> tuple | None:
    path = os.environ.get("SLMFORGE_KEYS_DB")
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_ino, st.st_mtime_ns, st.st_size)


def check_scopes(scopes: list[str]) -> list[str]:
    out = []
    for raw in scopes:
        for s in re.split(r"[,\s]+", raw.strip()):
            if not s:
                continue
            family = s.split(":", 1)[0]
            if s != "*" and family not in ENDPOINTS:
                raise SlmError(
                    f"unknown scope {s!r}: use *, or one of {', '.join(ENDPOINTS)}, optionally :MODEL"
                )
            if ":" in s and not s.split(":", 1)[1]:
                raise SlmError(f"scope {s!r} names no model after ':'")
            out.append(s)
    if not out:
        raise SlmError("a key needs at least one scope (e.g. --scopes chat,classify:intents)")
    return sorted(set(out), key=out.index)


def parse_duration(text: str) -> float | None:
    """Seconds in `30d`, `12h` or `45m`; None when `text` is not one of those."""
    m = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", text)
    return int(m.group(1)) * {"d": 86400, "h": 3600, "m": 60}[m.group(2)] if m else None


def parse_expiry(text: str) -> float:
    """`30d`, `12h`, `45m` from now, or an ISO date/time (UTC unless it says otherwise)."""
    seconds = parse_duration(text)
    if seconds is not None:
        return time.time() + seconds
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SlmError(
            f"--expires takes 30d, 12h, 45m or an ISO date like 2027-01-31 (got {text!r})"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if when.timestamp() <= time.time():
        raise SlmError(f"--expires {text} is in the past")
    return when.timestamp()


@contextlib.contextmanager
def _writing():
    try:
        yield
    except sqlite3.OperationalError as e:
        where = os.environ.get("SLMFORGE_KEYS_DB") or "the workspace database"
        raise SlmError(f"could not write the keys to {where}: {e}") from None


def _rows(con: sqlite3.Connection, where: str, args: tuple) -> list[ApiKey]:
    q = f"SELECT name, scopes, created, expires, revoked, rate_per_minute FROM api_keys {where}"
    return [ApiKey(r[0], r[1].split(), r[2], r[3], r[4], r[5]) for r in con.execute(q, args)]
