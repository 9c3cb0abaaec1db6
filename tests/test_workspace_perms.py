"""The workspace (registry, API-key hashes, audit log) is readable by its owner only."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from slmforge import workspace

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask():
    """The common 022 umask, under which the registry used to come out 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_workspace_is_owner_only(tmp_path, monkeypatch, loose_umask):
    root = tmp_path / "home" / "ws"
    monkeypatch.setenv("SLMFORGE_HOME", str(root))
    con = workspace.connect()
    con.execute("INSERT INTO artifacts (kind, name, path, created) VALUES ('model', 'm', '/m', 0)")
    con.commit()
    db = root / "workspace.db"
    assert _mode(root) == 0o700 and _mode(db) == 0o600
    sidecars = [db.with_name(db.name + s) for s in ("-wal", "-shm")]
    assert all(p.exists() for p in sidecars)  # WAL mode: both exist while a connection is open
    assert [_mode(p) for p in sidecars] == [0o600, 0o600]
    con.close()


def test_an_existing_loose_workspace_is_tightened_on_open(tmp_path, monkeypatch, loose_umask):
    root = tmp_path / "ws"
    monkeypatch.setenv("SLMFORGE_HOME", str(root))
    workspace.connect().close()
    db = root / "workspace.db"
    wal = db.with_name("workspace.db-wal")
    wal.write_bytes(b"")  # as an older slmforge left them: world-readable
    for path, mode in ((root, 0o755), (db, 0o644), (wal, 0o644)):
        path.chmod(mode)
    workspace.register("model", tmp_path / "m")
    assert (_mode(root), _mode(db)) == (0o700, 0o600)
    assert not wal.exists() or _mode(wal) == 0o600


def test_a_separate_keys_database_is_owner_only(tmp_path, monkeypatch, loose_umask):
    from slmforge.serve import auth

    keys = tmp_path / "secrets" / "keys.db"
    monkeypatch.setenv("SLMFORGE_KEYS_DB", str(keys))
    secret, _ = auth.create_key("app", ["classify"])
    assert secret and _mode(keys) == 0o600 and _mode(keys.parent) == 0o700
    keys.chmod(0o644)
    auth.connect().close()
    assert _mode(keys) == 0o600
