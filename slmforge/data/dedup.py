"""Exact and near-duplicate detection that keeps no document text in memory.

`Deduper.check(text)` returns "exact", "near" or None (new, now remembered). The first document
seen wins, so with the readers' sorted order the result is deterministic.

- Exact: a 16-byte BLAKE2b digest of the whitespace-insensitive normalised text (`clean.canonical`).
- Near: MinHash (`datasketch.MinHash`, affine32 scheme, `num_perm` permutations) over word 5-gram
  shingles of the case-folded text, indexed with LSH banding: the signature is cut into `b` bands of
  `r` rows, (b, r) chosen to minimise false positives + false negatives around `threshold` (the same
  criterion as datasketch's MinHashLSH). A document sharing any band with an earlier one is compared
  on the full signature and is a near duplicate when the estimated Jaccard similarity >= threshold.

State lives on disk, not in memory: the digests, band keys and signatures go to a scratch SQLite
file (`path`), with SQLite's page cache (a few MiB) as the only in-memory part. So memory stays
flat however many documents pass through; per document the file grows by ~0.7 KiB
(16 B digest + 4*num_perm B signature + b band keys). Shingles are hashed and MinHashed in batches,
so even one very long document needs only bounded memory.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
import zlib
from pathlib import Path

import numpy as np
from datasketch import MinHash

from slmforge.data.clean import canonical

SHINGLE = 5
_WORD = re.compile(r"\w+")
_BATCH = 4096
_P = np.uint64(0x100000001B3)  # FNV-64 prime, for combining word hashes into a shingle hash


@functools.lru_cache(maxsize=16)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with b*r <= num_perm minimising the false-positive plus false-negative area."""
    xs = np.linspace(0.0, 1.0, 2001)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - xs**r) ** b  # probability of becoming a candidate at similarity xs
            fp = np.trapezoid(np.where(xs <= threshold, p, 0.0), xs)
            fn = np.trapezoid(np.where(xs >= threshold, 1.0 - p, 0.0), xs)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


def _ident(x):
    return x


def shingle_hashes(text: str) -> np.ndarray:
    """32-bit hashes of the word 5-grams of the case-folded text (one shingle if it is shorter)."""
    words = _WORD.findall(text.casefold())
    if not words:
        return np.empty(0, dtype=np.uint32)
    wh = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words))
    k = min(SHINGLE, len(wh))
    n = len(wh) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(k):
            h = h * _P + wh[i : i + n] + np.uint64(i + 1)
    # Repeated shingles are left in: MinHash takes a minimum, so they change nothing.
    return ((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


class Deduper:
    """Streaming exact + near-duplicate filter backed by a scratch SQLite file (see module doc)."""

    def __init__(self, path: str | Path, threshold: float = 0.8, num_perm: int = 128, seed: int = 1):
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        self.path = Path(path)
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self._mh = MinHash(num_perm=num_perm, seed=seed, hashfunc=_ident)
        self._n = 0
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.executescript(
            """
            PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-4096;
            PRAGMA temp_store=FILE;
            CREATE TABLE exact (h BLOB PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE sig (id INTEGER PRIMARY KEY, v BLOB NOT NULL);
            CREATE TABLE band (k INTEGER NOT NULL, id INTEGER NOT NULL, PRIMARY KEY (k, id)) WITHOUT ROWID;
            BEGIN;
            """
        )

    def signature(self, text: str) -> np.ndarray | None:
        sh = shingle_hashes(text)
        if sh.size == 0:
            return None
        self._mh.clear()
        for i in range(0, sh.size, _BATCH):
            self._mh.update_batch(sh[i : i + _BATCH])
        return np.asarray(self._mh.hashvalues, dtype=np.uint32).copy()

    def _band_keys(self, sig: np.ndarray) -> list[int]:
        keys = []
        for b in range(self.bands):
            d = hashlib.blake2b(sig[b * self.rows : (b + 1) * self.rows].tobytes(), digest_size=8,
                                person=b.to_bytes(2, "little")).digest()  # fmt: skip
            keys.append(int.from_bytes(d, "little", signed=True))
        return keys

    def check(self, text: str) -> str | None:
        """'exact' or 'near' when `text` duplicates an earlier document, else None (and remember it)."""
        digest = hashlib.blake2b(canonical(text).encode(), digest_size=16).digest()
        cur = self.db.execute("INSERT OR IGNORE INTO exact (h) VALUES (?)", (digest,))
        if cur.rowcount == 0:
            return "exact"
        sig = self.signature(text)
        if sig is None:
            return None
        keys = self._band_keys(sig)
        marks = ",".join("?" * len(keys))
        cands = [r[0] for r in self.db.execute(f"SELECT DISTINCT id FROM band WHERE k IN ({marks})", keys)]
        for i in range(0, len(cands), 500):
            chunk = cands[i : i + 500]
            q = f"SELECT v FROM sig WHERE id IN ({','.join('?' * len(chunk))})"
            for (v,) in self.db.execute(q, chunk):
                other = np.frombuffer(v, dtype=np.uint32)
                if np.count_nonzero(other == sig) >= self.threshold * self.num_perm:
                    return "near"
        self._n += 1
        self.db.execute("INSERT INTO sig (id, v) VALUES (?, ?)", (self._n, sig.tobytes()))
        self.db.executemany("INSERT OR IGNORE INTO band (k, id) VALUES (?, ?)", [(k, self._n) for k in keys])
        if self._n % 2000 == 0:
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
        return None

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)

    def __enter__(self) -> Deduper:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
