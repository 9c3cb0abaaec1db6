"""The store interface behind `slm rag`: one embedded backend (SQLite, one file) and one server backend
(PostgreSQL + pgvector). Both keep files (path, content hash, tags), chunks (document, section path,
offsets, text), a full-text index and the chunks' embeddings, plus the embedding model they were built
with. Writes happen in transactions the indexer commits per batch of files.

Every chunk also carries the injection guard's finding (`flag`): NULL when it was never checked (an index
built before the guard, or with `guard: none`), '' when it was checked and is clean, else the reasons
("injection:rule:ignore_instructions,..."). Flagged chunks are quarantined: searches leave them out
unless `Filters.include_flagged` asks for them (`slm rag search` does, and marks them). The column was
added without a schema version bump: both stores add it to an older index when they open it (an index
they cannot write to is read as all unchecked), and older slmforge versions ignore it.

The two backends subclass `Store` (sqlite_store.py, pg_store.py); `open_store` (stores.py) picks one.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmforge.core import workspace
from slmforge.core.errors import SlmError

SCHEMA_VERSION = "1"


@dataclass
class Filters:
    """path: a substring of the file path, or a glob when it holds * ? or [ (matched on the whole path).
    tags: every one of these must be among the file's tags."""

    path: str | None = None
    tags: list[str] = field(default_factory=list)
    include_flagged: bool = False  # also chunks the injection guard flagged (quarantined by default)

    def __bool__(self) -> bool:
        """Is there a path or tag filter? (The quarantine is applied either way.)"""
        return bool(self.path or self.tags)

    def path_regex(self) -> str | None:
        """The path filter as a regular expression (a glob anchored, a substring escaped)."""
        if not self.path:
            return None
        if not any(c in self.path for c in "*?["):
            return re.escape(self.path)
        out, i = [], 0
        while i < len(self.path):  # a glob as a plain regex both SQLite (Python re) and PostgreSQL read
            c = self.path[i]
            if c == "*":
                out.append(".*")
            elif c == "?":
                out.append(".")
            elif c == "[" and "]" in self.path[i + 1 :]:
                j = self.path.index("]", i + 1)
                out.append("[" + self.path[i + 1 : j].replace("!", "^", 1) + "]")
                i = j
            else:
                out.append(re.escape(c))
            i += 1
        return "^" + "".join(out) + "$"


@dataclass
class StoredChunk:
    """One chunk as stored: `text == document[start:end]` of document `doc` (from file `path`)."""

    id: int
    path: str
    doc: str
    section: str
    start: int
    end: int
    text: str
    tags: list[str]
    flag: str | None = None  # None: never checked; '': clean; else the guard's reasons (quarantined)

    @property
    def flagged(self) -> bool:
        return bool(self.flag)


@dataclass
class NewChunk:
    """A chunk to store: which document of the file it comes from, where, what it says, and what the
    injection guard found in it (see StoredChunk.flag)."""

    doc: str
    section: str
    start: int
    end: int
    text: str
    flag: str | None = None


def embed_text(section: str, text: str) -> str:
    """What gets embedded and full-text indexed: the section path gives the chunk its context."""
    return f"{section}\n{text}" if section else text


class Store(ABC):
    """The few methods the indexer, search, ask and eval need; one class per backend."""

    location: str  # shown to users: a file path, or a redacted URL plus the index name
    parallel_text_search = False  # may search_text run in another thread during search_vector?

    @abstractmethod
    def meta(self) -> dict[str, str]: ...

    @abstractmethod
    def set_meta(self, values: dict[str, str]) -> None: ...

    @abstractmethod
    def file_hashes(self) -> dict[str, str]:
        """{path: sha256} of every indexed file."""

    @abstractmethod
    def put_file(
        self, path: str, sha256: str, tags: list[str], chunks: list[NewChunk], vectors: np.ndarray
    ) -> None:
        """Replace whatever the index holds for `path` (in the open transaction)."""

    @abstractmethod
    def delete_file(self, path: str) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    def finish(self) -> None:
        """After an index run: bring derived search structures up to date (a no-op unless a store has some)."""
        return None

    @abstractmethod
    def search_text(self, terms: list[str], k: int, filters: Filters) -> list[tuple[int, float]]:
        """Full-text ranking of chunks matching any of `terms` (BM25 on SQLite): [(chunk id, score)]."""

    @abstractmethod
    def search_vector(self, vector: np.ndarray, k: int, filters: Filters) -> list[tuple[int, float]]:
        """Nearest chunks by cosine similarity: [(chunk id, cosine)], best first."""

    @abstractmethod
    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]: ...

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """files, chunks, flagged and unchecked chunks, and size_bytes where the backend knows it."""

    @abstractmethod
    def chunks_to_check(self, after_id: int, limit: int, every: bool) -> list[StoredChunk]:
        """Up to `limit` chunks with ids above `after_id`, in id order: every one, or (`every` False)
        those never checked by the guard."""

    @abstractmethod
    def set_flags(self, flags: list[tuple[int, str | None]]) -> None:
        """Record the guard's finding for these chunk ids (in the open transaction)."""

    @abstractmethod
    def flagged(self, limit: int) -> list[StoredChunk]:
        """Up to `limit` quarantined chunks, in id order."""

    @abstractmethod
    def close(self) -> None: ...

    # ------------------------------------------------------------ shared checks

    def check_model(self, model: str, dim: int) -> None:
        """Refuse to mix embedding models: the index's vectors and the query's must come from one model."""
        meta = self.meta()
        built, built_dim = meta.get("embed_model"), meta.get("embed_dim")
        if built is None:
            return
        if built != model or int(built_dim or 0) != dim:
            raise SlmError(
                f"{self.location} was built with embedding model {built} ({built_dim}-d), not {model} "
                f"({dim}-d): query it with --embed-model {built}, or index into a new --index"
            )


def is_postgres(url: str | None) -> bool:
    return bool(url) and url.startswith(("postgresql://", "postgres://"))


def index_path(name: str) -> Path:
    """An index name -> `$SLMFORGE_HOME/indexes/NAME.sqlite`; a path (has / or ends .sqlite) -> itself."""
    if "/" in name or name.endswith((".sqlite", ".db")) or name.startswith("."):
        return Path(name).expanduser()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise SlmError(f"index name {name!r}: use letters, digits, . _ - (or give a path)")
    return workspace.home() / "indexes" / f"{name}.sqlite"


def text_sha256(text: str) -> str:
    """The hex sha256 of a chunk's text (UTF-8), in every `slm synth` row's source: it finds the chunk again in
    an index rebuilt from the same documents, where chunk ids may differ."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()
