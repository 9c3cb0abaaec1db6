"""The workspace and what slmforge writes: the registry (with the API-key hashes and the audit log) is
readable by its owner only, and `--overwrite` removes only a directory slmforge made."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir, check_replaceable

posix = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask():
    """The common 022 umask, under which the registry used to come out 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@posix
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


@posix
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


@posix
def test_a_separate_keys_database_is_owner_only(tmp_path, monkeypatch, loose_umask):
    from slmforge.serve import auth

    keys = tmp_path / "secrets" / "keys.db"
    monkeypatch.setenv("SLMFORGE_KEYS_DB", str(keys))
    secret, _ = auth.create_key("app", ["classify"])
    assert secret and _mode(keys) == 0o600 and _mode(keys.parent) == 0o700
    keys.chmod(0o644)
    auth.connect().close()
    assert _mode(keys) == 0o600


# ---------------------------------------------------------------- --overwrite


def _foreign(d):
    """A directory of the user's own files, which no slmforge command made."""
    d.mkdir(parents=True)
    (d / "thesis.tex").write_text("years of work")
    (d / "config.json").write_text("{}")  # even an HF-looking config is not a run
    return d


def test_overwrite_refuses_a_directory_slmforge_did_not_make(tmp_path, slm_cli, tiny_corpus_dir):
    out = _foreign(tmp_path / "mine")
    code, stdout, stderr = slm_cli(
        "tokenizer", "train", tiny_corpus_dir, "--vocab-size", "300", "--out", out, "--overwrite"
    )
    assert code == 2 and "Traceback" not in stdout + stderr
    assert f"--out {out} exists and is not an slmforge artifact; remove it yourself" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert (out / "thesis.tex").read_text() == "years of work"


def test_overwrite_still_replaces_what_slmforge_made(tmp_path, slm_cli, tiny_corpus_dir):
    out = tmp_path / "tok"
    args = ("tokenizer", "train", tiny_corpus_dir, "--vocab-size", "300", "--out", out)
    assert slm_cli(*args)[0] == 0 and (out / workspace.MANIFEST).exists()
    assert slm_cli(*args, "--overwrite")[0] == 0 and (out / "tokenizer.json").exists()


@pytest.mark.recipe
def test_pretrain_overwrite_refuses_a_foreign_directory(tmp_path, tiny_corpus_dir, tiny_tokenizer_dir):
    from slmforge.lm.pretrain import PretrainConfig, pretrain

    out = _foreign(tmp_path / "mine")
    cfg = PretrainConfig(
        data=str(tiny_corpus_dir), tokenizer=str(tiny_tokenizer_dir), out=str(out), depth="2", seq_len=32,
        batch_size=4, precision="fp32", max_steps=1, overwrite=True,
    )  # fmt: skip
    with pytest.raises(SlmError, match="is not an slmforge artifact; remove it yourself"):
        pretrain(cfg, progress=False)
    assert (out / "thesis.tex").exists()


@pytest.mark.parametrize("made", ["manifest", "run", "run subdir", "empty", "workspace"])
def test_what_counts_as_slmforge_made(tmp_path, made):
    d = tmp_path / "d"
    if made == "manifest":
        _foreign(d)
        (d / workspace.MANIFEST).write_text("{}")
    elif made == "run":
        _foreign(d)
        (d / "metrics.jsonl").write_text("")
    elif made == "run subdir":
        _foreign(tmp_path / "run")
        (tmp_path / "run" / "metrics.jsonl").write_text("")
        d = _foreign(tmp_path / "run" / "model")
    elif made == "empty":
        d.mkdir()
    else:
        d = _foreign(workspace.home() / "models" / "x")
    check_replaceable(d)
    with atomic_dir(d, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in d.iterdir()) == ["new"]


@pytest.mark.parametrize("where", ["root", "home", "cwd", "cwd's parent", "workspace"])
def test_never_removes_the_root_a_home_or_the_cwd(tmp_path, monkeypatch, where):
    """Refused even when they carry a manifest (an artifact registered at the top of a home, say)."""
    home = tmp_path / "home"
    cwd = home / "project" / "work"
    cwd.mkdir(parents=True)
    for d in (home, home / "project", cwd):
        (d / workspace.MANIFEST).write_text("{}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    target = {"root": "/", "home": home, "cwd": ".", "cwd's parent": home / "project"}.get(where)
    target = target or workspace.home()
    with pytest.raises(SlmError, match="refusing to remove it") as e:
        check_replaceable(target)
    assert "\n" not in str(e.value)
    if where != "root":  # never try to replace / for real, even to see it refused
        with pytest.raises(SlmError, match="refusing to remove it"), atomic_dir(target, overwrite=True):
            pass
    assert (home / workspace.MANIFEST).exists() and (cwd / workspace.MANIFEST).exists()


# ---------------------------------------------------------------- slm audit


MARKUP = ["[bold]x[/", "[/]", "[red]", "a\\", "[link=file:///etc/passwd]x[/link]", ":smile: [/bold]"]


def test_audit_shows_recorded_markup_verbatim():
    """A client picks the model name it sends; the audit table prints it as text, whatever it holds."""
    from typer.testing import CliRunner

    from slmforge.cli import app
    from slmforge.serve import audit

    log = audit.AuditLog()
    for n, text in enumerate(MARKUP):
        log.write(audit.AuditRecord(2e9 + n, f"r{n}", "chat", "dev", text, 1, 1, 5.0, 400, f"block: {text}"))
    log.write(audit.AuditRecord(2e9 + 9, "r9", "[/]", "ops", "m", 1, 1, 5.0, 200))  # an odd endpoint too
    log.close()
    runner = CliRunner()
    for args in (["audit"], ["audit", "--summary"]):
        result = runner.invoke(app, args, env={"COLUMNS": "250"})
        assert result.exit_code == 0 and result.exception is None, result.output
    table = runner.invoke(app, ["audit"], env={"COLUMNS": "250"}).output
    for text in MARKUP:
        assert text in table and f"block: {text}" in table
    assert "[/]" in runner.invoke(app, ["audit", "--summary"], env={"COLUMNS": "250"}).output


@pytest.mark.parametrize("name", ["[/]", "[bold]x[/", "runs/[test]"])
def test_an_error_quoting_markup_prints_it_verbatim(slm_cli, name):
    """Error messages quote user input (here an unknown model name) and are printed as text."""
    code, stdout, stderr = slm_cli("pull", name)
    assert code == 2 and "Traceback" not in stdout + stderr
    assert stderr.startswith("error: unknown model") and repr(name) in stderr


def test_forget_under_drops_only_that_tree(tmp_path, monkeypatch):
    """A workflow that trains intermediates in a temporary directory forgets them, leaving `slm ls` no
    "missing" rows, and keeps a sibling whose name merely starts the same."""
    monkeypatch.setenv("SLMFORGE_HOME", str(tmp_path / "ws"))
    tmp = tmp_path / ".guard.x1"
    for p in (tmp / "torch", tmp / "torch-3l", tmp_path / ".guard.x1b"):
        p.mkdir(parents=True)
        workspace.register("model", p)
    assert workspace.forget_under(tmp) == 2
    assert [a.name for a in workspace.list_artifacts()] == [".guard.x1b"]
