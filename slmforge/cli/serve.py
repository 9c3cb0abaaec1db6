"""`slm serve`, `slm keys create/list/revoke` and `slm audit`: thin adapters over slmforge.serve."""

from __future__ import annotations

import json
import time

import typer
from rich.table import Table
from rich.text import Text

from slmforge.cli.render import console, out
from slmforge.core.errors import SlmError

keys_app = typer.Typer(
    help="API keys for `slm serve`: create (shown once), list, revoke.", no_args_is_help=True
)


def serve(
    config: str = typer.Option(
        ..., "--config", "-c", help="serve.yaml: models, limits, auth, guard, pipelines."
    ),
    host: str = typer.Option(None, "--host", help="Override the config's host."),
    port: int = typer.Option(None, "--port", help="Override the config's port."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve models, indexes and pipelines behind one OpenAI-compatible, keyed, rate-limited, audited door."""
    import logging

    import uvicorn

    from slmforge.serve.app import create_app, freeze_heap
    from slmforge.serve.config import load_config, validate

    cfg = load_config(config)
    cfg.host = host or cfg.host
    cfg.port = port or cfg.port
    validate(cfg, config)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("slmforge.audit").setLevel(logging.INFO)  # audit.log_json lines
    console.print(f"loading {len(cfg.models)} model(s) ...", highlight=False)
    app = create_app(cfg)
    freeze_heap()
    console.print(
        f"serving on http://{cfg.host}:{cfg.port} (OpenAPI: /docs; keys: `slm keys create`)", highlight=False
    )
    uvicorn.run(app, **uvicorn_options(cfg), log_level=log_level, timeout_graceful_shutdown=10)


def uvicorn_options(cfg) -> dict:
    """How uvicorn listens for `cfg`. Its defaults believe X-Forwarded-For from 127.0.0.1, so any local
    client (or a sidecar) could pick its own address and rotate it past the failed-key limiter; here the
    socket's peer is the client unless `auth.trusted_proxies` names the proxies whose header counts."""
    proxies = list(cfg.auth.trusted_proxies)
    return {"host": cfg.host, "port": cfg.port, "proxy_headers": bool(proxies),
            "forwarded_allow_ips": proxies or None}  # fmt: skip


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(
        ..., "--name", "-n", help="Who or what holds the key (recorded in the audit log)."
    ),
    scopes: list[str] = typer.Option(
        ...,
        "--scopes",
        "-s",
        help="Comma-separated: *, chat, completions, embeddings, classify, rag, pipelines, "
        "models, metrics, each optionally :MODEL (classify:intents, pipelines:bank).",
    ),
    expires: str = typer.Option(None, "--expires", help="30d, 12h, 45m or an ISO date; default: never."),
    rate: int = typer.Option(
        None, "--rate", help="Requests per minute for this key (default: the server's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the key as JSON."),
) -> None:
    """Create an API key. The secret is printed once and stored only as its SHA-256."""
    from slmforge.serve.auth import create_key

    secret, key = create_key(name, scopes, expires, rate)
    if as_json:
        out.print_json(
            json.dumps({"name": key.name, "key": secret, "scopes": key.scopes, "expires": key.expires})
        )
        return
    print(secret)
    until = "never" if key.expires is None else _when(key.expires)
    console.print(
        f"key {key.name!r}: scopes {' '.join(key.scopes)}, expires {until}. It is shown only this once.",
        highlight=False,
    )


@keys_app.command("list")
def keys_list(
    all_keys: bool = typer.Option(False, "--all", help="Include revoked and expired keys."),
) -> None:
    """The keys (names, scopes, dates; never the secrets)."""
    from slmforge.serve.auth import list_keys

    keys = list_keys(include_inactive=all_keys)
    t = Table("name", "scopes", "created", "expires", "rate/min", "state")
    for k in keys:
        state = "active" if k.active else ("revoked" if k.revoked else "expired")
        expires = "never" if k.expires is None else _when(k.expires)
        t.add_row(k.name, " ".join(k.scopes), _when(k.created), expires, str(k.rate_per_minute or "-"), state)
    out.print(t)


@keys_app.command("revoke")
def keys_revoke(name: str = typer.Argument(..., help="The key's name.")) -> None:
    """Revoke a key: refused from the next request on."""
    from slmforge.serve.auth import revoke_key

    revoke_key(name)
    console.print(f"revoked {name!r}", highlight=False)


def audit(
    since: str = typer.Option(None, "--since", help="Only records newer than this: 30m, 12h, 7d."),
    key: str = typer.Option(None, "--key", help="Only this key name."),
    endpoint: str = typer.Option(None, "--endpoint", help="Only this endpoint (chat, classify, ...)."),
    status: int = typer.Option(None, "--status", help="Only this HTTP status."),
    limit: int = typer.Option(50, "--limit", help="At most this many records (0: all)."),
    summary: bool = typer.Option(
        False, "--summary", help="Counts and latency per endpoint and status instead."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Query the serving audit log (one record per request)."""
    from dataclasses import asdict

    from slmforge.serve.audit import query

    start = None
    if since:
        from slmforge.serve.auth import parse_duration

        seconds = parse_duration(since)
        if seconds is None:
            raise SlmError(f"--since takes 30m, 12h or 7d (got {since!r})")
        start = time.time() - seconds
    records = query(start, key, endpoint, status, None if summary else limit)
    if summary:
        _summary(records, as_json)
        return
    if as_json:
        for r in records:
            print(json.dumps(asdict(r)))
        return
    t = Table("time", "key", "endpoint", "model", "status", "ms", "in", "out", "guard")
    for r in records:
        t.add_row(_when(r.time), _plain(r.key_name), _plain(r.endpoint), _plain(r.model), str(r.status),
                  f"{r.latency_ms:.1f}", str(r.tokens_in), str(r.tokens_out), _plain(r.guard))  # fmt: skip
    out.print(t)


def _plain(value: str | None) -> Text:
    """A recorded string as a table cell, never read as Rich markup: a client chooses the model name it
    sends, and `[/]` or `[bold]x[/` in it made `slm audit` crash (or restyle the table)."""
    return Text(value or "-")


def _summary(records, as_json: bool) -> None:
    import numpy as np

    groups: dict[tuple[str, int], list[float]] = {}
    counts: dict[tuple[str, int], int] = {}
    for r in records:
        groups.setdefault((r.endpoint, r.status), []).append(r.latency_ms)
        # a summary record of sampled-out unauthenticated refusals stands for `count` requests
        counts[r.endpoint, r.status] = counts.get((r.endpoint, r.status), 0) + r.count
    rows = [{"endpoint": e, "status": s, "requests": counts[e, s], "p50_ms": float(np.percentile(v, 50)),
             "p99_ms": float(np.percentile(v, 99))} for (e, s), v in sorted(groups.items())]  # fmt: skip
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    t = Table("endpoint", "status", "requests", "p50 ms", "p99 ms")
    for row in rows:
        t.add_row(
            _plain(row["endpoint"]),
            str(row["status"]),
            str(row["requests"]),
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
        )
    out.print(t)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
