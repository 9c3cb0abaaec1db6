"""serve.yaml validation (one-line errors), and the `slm keys` / `slm audit` / `slm serve` commands."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.serve import audit
from slmforge.serve.auth import create_key, list_keys, parse_expiry
from slmforge.serve.config import from_dict, load_config

MODELS = [{"name": "m", "kind": "classify", "path": "models/m"}]


def test_load_config_resolves_paths_next_to_the_file(tmp_path):
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "pipes.yaml").write_text("{}")
    (tmp_path / "serve.yaml").write_text(
        "port: 9000\nlimits: {queue_size: 8, timeout_s: 5}\npipelines: pipes.yaml\n"
        "models:\n  - {name: m, kind: classify, path: models/m, batch: {max_size: 16}}\n"
        "  - {name: docs, kind: rag, index: docs, generator: smollm2-135m-instruct}\n"
    )
    cfg = load_config(tmp_path / "serve.yaml")
    assert cfg.port == 9000 and cfg.limits.queue_size == 8 and cfg.limits.timeout_s == 5.0
    assert cfg.models[0].path == str(tmp_path / "models" / "m") and cfg.models[0].batch.max_size == 16
    assert cfg.models[1].index == "docs"  # not a file here: an index name in the workspace
    assert cfg.pipelines == str(tmp_path / "pipes.yaml")


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"models": MODELS, "prot": 1}, "unknown setting 'prot'"),
        ({"models": [{"name": "m", "kind": "llm", "path": "x"}]}, "kind must be one of"),
        ({"models": [{"name": "m", "kind": "chat"}]}, "needs a path"),
        ({"models": [{"name": "m", "kind": "rag", "index": "i"}]}, "needs a generator"),
        ({"models": MODELS * 2}, "two models are named 'm'"),
        ({"models": MODELS, "limits": {"queue_size": 0}}, "limits.queue_size must be at least 1"),
        ({"models": MODELS, "limits": {"timeout_s": "soon"}}, "wrong type"),
        ({"models": MODELS, "port": 70000}, "port must be"),
        ({"models": MODELS, "host": "0.0.0.0", "auth": {"open_on_loopback": ["models"]}}, "requires a key"),
        ({"models": MODELS, "auth": {"open_on_loopback": ["admin"]}}, "unknown endpoints"),
        ({"models": "m"}, "models must be a list"),
    ],
)
def test_bad_configs_fail_in_one_line(raw, needle):
    with pytest.raises(SlmError) as e:
        from_dict(raw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_keys_cli_shows_the_secret_once_and_stores_its_hash(slm_cli):
    code, out, err = slm_cli(
        "keys", "create", "--name", "ops", "--scopes", "classify:intents,chat", "--expires", "30d"
    )
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("slm-") and len(secret) > 40 and "shown only this once" in err
    code, out, _ = slm_cli("keys", "list")
    assert code == 0 and "ops" in out and "classify:intents chat" in out and secret not in out
    with sqlite3.connect(workspace.home() / "workspace.db") as con:
        rows = con.execute("SELECT * FROM api_keys").fetchall()
    assert secret not in repr(rows)
    code, _, err = slm_cli("keys", "create", "--name", "ops", "--scopes", "chat")
    assert code == 2 and "active key named 'ops'" in err
    assert slm_cli("keys", "revoke", "ops")[0] == 0
    assert "ops" not in slm_cli("keys", "list")[1] and "revoked" in slm_cli("keys", "list", "--all")[1]
    code, _, err = slm_cli("keys", "revoke", "ops")
    assert code == 2 and "no unrevoked key" in err
    code, _, err = slm_cli("keys", "create", "--name", "x", "--scopes", "admin")
    assert code == 2 and "unknown scope 'admin'" in err
    code, _, err = slm_cli("keys", "create", "--name", "x", "--scopes", "chat", "--expires", "soon")
    assert code == 2 and "--expires takes" in err


def test_expiry_forms():
    assert parse_expiry("2h") > parse_expiry("90m")
    assert parse_expiry("2999-01-31") > parse_expiry("30d")
    with pytest.raises(SlmError, match="in the past"):
        parse_expiry("2000-01-01")


def test_audit_cli(slm_cli):
    log = audit.AuditLog()
    for status in (200, 200, 429):
        log.write(audit.AuditRecord(1.7e9 + status, "r", "classify", "ops", "intents", 5, 0, 12.0, status))
    log.write(audit.AuditRecord(2e9, "r", "chat", "dev", "tiny", 9, 4, 80.0, 200, "allow"))
    log.close()
    code, out, err = slm_cli("audit", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4 and rows[0]["endpoint"] == "chat" and "key" not in rows[0]
    code, out, _ = slm_cli("audit", "--key", "ops", "--status", "429", "--json")
    assert [json.loads(line)["status"] for line in out.splitlines()] == [429]
    code, out, _ = slm_cli("audit", "--summary", "--json")
    summary = [json.loads(line) for line in out.splitlines()]
    assert {(s["endpoint"], s["status"], s["requests"]) for s in summary} == {("chat", 200, 1), ("classify", 200, 2),
                                                                              ("classify", 429, 1)}  # fmt: skip
    assert slm_cli("audit")[0] == 0
    code, _, err = slm_cli("audit", "--since", "yesterday")
    assert code == 2 and "--since takes" in err


def test_serve_command_refuses_a_bad_config_in_one_line(slm_cli, tmp_path):
    (tmp_path / "serve.yaml").write_text("models:\n  - {name: m, kind: classify, path: nowhere}\n")
    code, _, err = slm_cli("serve", "--config", str(tmp_path / "serve.yaml"))
    assert code == 2 and "model 'm'" in err and "Traceback" not in err
    code, _, err = slm_cli("serve", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no serve config" in err


def test_key_names_are_checked():
    with pytest.raises(SlmError, match="key name"):
        create_key("has space", ["chat"])
    assert list_keys() == []


def test_a_shared_keys_file_and_a_read_only_one(tmp_path, monkeypatch, make_app):
    from fastapi.testclient import TestClient

    from slmforge.serve import auth

    keys_db = tmp_path / "keys" / "keys.db"
    monkeypatch.setenv("SLMFORGE_KEYS_DB", str(keys_db))
    secret = create_key("replica-user", ["classify"])[0]
    body, headers = {"model": "intents", "input": "x"}, {"Authorization": f"Bearer {secret}"}
    with TestClient(make_app()) as c:
        assert c.post("/v1/classify", json=body, headers=headers).status_code == 200
    real_access = os.access
    monkeypatch.setattr(auth.os, "access", lambda *a: False)  # as mounted read-only from a Kubernetes Secret
    with TestClient(make_app()) as c:
        assert c.post("/v1/classify", json=body, headers=headers).status_code == 200
    with pytest.raises(SlmError, match="could not write the keys to .*readonly"):
        create_key("another", ["chat"])
    # a Secret update swaps the file: the running server reads the new one (here: the key revoked)
    monkeypatch.setattr(auth.os, "access", real_access)
    newer = tmp_path / "keys" / "newer.db"
    shutil.copy(keys_db, newer)
    monkeypatch.setenv("SLMFORGE_KEYS_DB", str(newer))
    auth.revoke_key("replica-user")
    monkeypatch.setenv("SLMFORGE_KEYS_DB", str(keys_db))
    monkeypatch.setattr(auth.os, "access", lambda *a: False)
    with TestClient(make_app()) as c:
        assert c.post("/v1/classify", json=body, headers=headers).status_code == 200
        os.replace(newer, keys_db)
        assert c.post("/v1/classify", json=body, headers=headers).status_code == 401
    with sqlite3.connect(workspace.home() / "workspace.db") as con:  # the workspace holds no keys
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    assert "api_keys" not in tables and "audit" in tables


def test_audit_records_as_json_log_lines(make_app, new_key, caplog):
    import logging

    from fastapi.testclient import TestClient

    caplog.set_level(logging.INFO, logger="slmforge.audit")
    k = {"Authorization": f"Bearer {new_key('classify', name='dana')}"}
    with TestClient(make_app(audit={"log_json": True})) as c:
        c.post("/v1/classify", json={"model": "intents", "input": "x"}, headers=k)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "slmforge.audit"]
    assert len(lines) == 1 and lines[0]["key_name"] == "dana" and lines[0]["status"] == 200
