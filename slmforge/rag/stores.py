"""`open_store`: the store behind an index name, SQLite or PostgreSQL. A module of its own, above the two
backends, so that the interface they subclass (store.py) imports neither."""

from __future__ import annotations

from slmforge.core.errors import SlmError
from slmforge.rag.store import Store, index_path, is_postgres


def open_store(index: str, store: str | None = None, create: bool = False) -> Store:
    """The store for `index`: PostgreSQL when `store` is a postgresql:// URL, else the SQLite file."""
    if store and not is_postgres(store):
        raise SlmError(f"--store must be a postgresql:// URL (got {store!r}); leave it out for SQLite")
    if is_postgres(store):
        from slmforge.rag.pg_store import PgStore

        return PgStore(store, index, create=create)
    from slmforge.rag.sqlite_store import SqliteStore

    return SqliteStore(index_path(index), create=create)
