"""serve.yaml as typed dataclasses, validated at startup with one-line errors.

```yaml
host: 127.0.0.1
port: 8000
threads: 1                      # torch / ONNX threads per worker (default: the free cores)
auth:
  open_on_loopback: []          # endpoints served without a key, to loopback clients only (e.g. [models])
  trusted_proxies: []           # proxy addresses / CIDRs whose X-Forwarded-For is believed (default: none)
limits:
  max_body_bytes: 1048576       # 413 above
  max_messages: 256             # messages in one chat request (400 above, before any guard work)
  max_content_parts: 64         # content parts in one message (400 above)
  max_prompt_chars: 65536       # characters of a request's messages / prompt / question / each input (400)
  max_stop_chars: 64            # characters of each of the (at most 4) stop strings (400 above)
  max_tokens: 512               # cap on a request's max_tokens (400 above)
  max_inputs: 256               # texts in one classify / embeddings request (400 above)
  rate_per_minute: 600          # per key (a key may carry its own); 429 with Retry-After above
  burst: 60
  timeout_s: 60                 # per request; 504 after
  queue_size: 64                # requests admitted (running + waiting); 503 above
  generation_workers: 2         # generations decoded at once by a chat model without continuous batching
audit:                          # one record per request in the workspace DB (slmforge.serve.audit)
  store_prompts: false          # when true, prompts are stored PII-redacted
  log_json: false               # also log each record as one JSON line (slmforge.audit logger)
  retention_days: 90            # records older are deleted at start and hourly; 0 keeps them forever
  unauthenticated_per_minute: 60  # refusals without a key (401/429): this many per client address and
                                # minute in full, the rest as one summary record (count) per minute
  # When the DB refuses writes (full disk, locked, I/O), records are retried with backoff, then appended
  # to audit-spill.jsonl next to the DB and replayed exactly once when it works again (or at the next
  # start); /readyz answers 503 while the writer's DB writes fail; slm_audit_dropped_total counts the
  # records neither the DB nor the spill file took.
guard: null                     # a slmforge.guard config (block / redact / flag per route)
pipelines: null                 # a pipelines YAML file (slmforge.route.pipeline)
models:
  - {name: smollm, kind: chat, path: smollm2-135m-instruct, max_new_tokens: 128}  # batching: auto, slots: 16, slot_tokens: 1024
  - {name: smollm-tools, kind: chat, path: smollm2-135m-instruct, chat_template: examples/tools/chatml-tools.jinja}
  - {name: intents, kind: classify, path: models/intents, batch: {max_size: 32, max_wait_ms: 5}}
  - {name: minilm, kind: embeddings, path: minilm-l6, runtime: onnx}
  - {name: docs, kind: rag, index: docs, generator: smollm}
  - {name: big, kind: chat, upstream: "http://127.0.0.1:8001/v1", upstream_model: cpt}   # vLLM behind the door
```
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.core.errors import SlmError

KINDS = ("chat", "classify", "embeddings", "rag")
# what a scope names: one per endpoint family (chat covers /v1/chat/completions, completions /v1/completions)
ENDPOINTS = ("models", "chat", "completions", "embeddings", "classify", "rag", "pipelines", "metrics")


@dataclass
class AuthConfig:
    open_on_loopback: list[str] = field(default_factory=list)
    """Endpoints served without a key, to loopback clients only (e.g. [models])."""
    trusted_proxies: list[str] = field(default_factory=list)
    """Proxy addresses / CIDRs whose X-Forwarded-For is believed (default: none).

    uvicorn believes X-Forwarded-For only from these; with none, the socket's peer is the client, so rotating
    the header from loopback cannot dodge the failed-key limiter."""


@dataclass
class LimitsConfig:
    max_body_bytes: int = 1 << 20
    """Largest request body, in bytes (413 above)."""
    max_messages: int = 256
    """Messages in one chat request (400 above, before any guard work)."""
    max_content_parts: int = 64
    """Content parts in one message (400 above)."""
    max_prompt_chars: int = 65536
    """Characters of a request's messages / prompt / question / each input (400 above).

    The guard scores at most this much text per check."""
    max_stop_chars: int = 64
    """Characters of each of the (at most 4) stop strings (400 above)."""
    max_tokens: int = 512
    """Cap on a request's max_tokens (400 above)."""
    max_inputs: int = 256
    """Texts in one classify / embeddings request (400 above)."""
    rate_per_minute: int = 600
    """Requests per minute per key (a key may carry its own); 429 with Retry-After above."""
    burst: int = 60
    """Requests a key may spend at once (its token bucket's size), refilled at rate_per_minute."""
    timeout_s: float = 60.0
    """Seconds per request; 504 after."""
    queue_size: int = 64
    """Requests admitted (running + waiting); 503 above."""
    generation_workers: int = 2
    """Generations decoded at once by a chat model without continuous batching; the rest wait in the queue."""


@dataclass
class AuditConfig:
    store_prompts: bool = False
    """Store each request's prompt too, PII-redacted."""
    log_json: bool = False
    """Also log each record as one JSON line (slmforge.audit logger), for a cluster's log collector."""
    retention_days: float = 90.0
    """Records older than this are deleted at start and hourly; 0 keeps them forever."""
    unauthenticated_per_minute: int = 60
    """Refusals without a key (401/429): this many per client address and minute in full, the rest as one
    summary record (count) per minute."""


@dataclass
class BatchConfig:
    max_size: int = 32
    """Texts run in one batch at most."""
    max_wait_ms: float = 5.0
    """Milliseconds a batch keeps collecting after its first request (a lone request waits at most this)."""


@dataclass
class ModelConfig:
    """One served model. chat: a causal LM (catalog name, directory or .gguf); classify: a directory from
    `slm classify train` / export; embeddings: a sentence-transformers model; rag: an index answered by
    `generator` (a chat model's name here, or a model path)."""

    name: str
    """The name clients ask for (the `model` of a request)."""
    kind: str
    """chat, classify, embeddings or rag."""
    path: str = ""
    """chat: a causal LM (catalog name, directory or .gguf); classify: a classifier directory; embeddings: a
    sentence-transformers model."""
    max_new_tokens: int = 128
    """Default cap on the tokens generated per request (chat, rag)."""
    runtime: str = "onnx"
    """embeddings: onnx, onnx-int8 or torch."""
    backend: str = "auto"
    """chat: auto, ort, torch or llama.cpp (slmforge.infer.engines)."""
    precision: str = "int8"
    """chat on the ort backend: int8, int4 or fp32."""
    index: str = ""
    """rag: the index answered from (a name, a .sqlite path, or its name in `store`)."""
    generator: str = ""
    """rag: the model that answers, a chat model's name here or a model path."""
    store: str | None = None
    """rag: postgresql://… for an index in PostgreSQL [default: SQLite]."""
    upstream: str = ""
    """chat: an OpenAI-compatible base URL (vLLM ...) that decodes instead of slmforge."""
    upstream_model: str = ""
    """The model's name upstream (default: name)."""
    upstream_key_env: str = ""
    """An environment variable holding the upstream's API key, if it wants one."""
    chat_template: str = ""
    """chat: a Jinja chat template file used instead of the model's own (e.g.
    examples/tools/chatml-tools.jinja, so a ChatML model such as SmolLM2 can take `tools`)."""
    batching: str = "auto"
    """chat: continuous (requests decoded together, each joining and leaving the running batch at a token
    boundary; the ort backend), off (each generation in its own worker, limits.generation_workers at once) or
    auto (continuous where the model runs on ort and its graph allows it, else off)."""
    slots: int = 16
    """chat, continuous batching: requests decoded together; the rest wait (admitted up to limits.queue_size)."""
    slot_tokens: int = 1024
    """chat, continuous batching: KV-cache positions a request may hold, prompt plus reply (a longer prompt is a
    400; max_tokens is clamped to what is left). The memory budget, slots x slot_tokens, is allocated at start."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    """classify, embeddings: how requests are micro-batched."""


@dataclass
class ServeConfig:
    models: list[ModelConfig] = field(default_factory=list)
    """The served models (see ModelConfig)."""
    host: str = "127.0.0.1"
    """The address to listen on (`slm serve --host` overrides it)."""
    port: int = 8000
    """The port to listen on (`slm serve --port` overrides it)."""
    threads: int | None = None
    """Torch / ONNX threads per worker (default: the free cores)."""
    auth: AuthConfig = field(default_factory=AuthConfig)
    """Keys and who may skip them (see AuthConfig)."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """Request size, rate and concurrency limits (see LimitsConfig)."""
    audit: AuditConfig = field(default_factory=AuditConfig)
    """The audit log: one record per request in the workspace DB (see AuditConfig)."""
    guard: dict | None = None
    """A slmforge.guard config (block / redact / flag per route); None: the guard's defaults."""
    pipelines: str | dict | None = None
    """A pipelines YAML file (or its parsed dict) for /v1/pipelines (slmforge.route.pipeline)."""

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def load_config(path: str | Path) -> ServeConfig:
    """Read and validate serve.yaml; relative model, index and pipeline paths are taken from its folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SlmError(f"no serve config at {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SlmError(f"{path} is not valid YAML{where}") from None
    cfg = from_dict(raw, str(path))
    base = path.resolve().parent
    for m in cfg.models:
        m.path = _near(m.path, base)
        m.index = _near(m.index, base)
    if isinstance(cfg.pipelines, str):
        cfg.pipelines = _near(cfg.pipelines, base)
    return cfg


def from_dict(raw: Any, where: str = "serve config") -> ServeConfig:
    if not isinstance(raw, dict):
        raise SlmError(f"{where} must be a mapping of settings")
    models = raw.get("models") or []
    if not isinstance(models, list):
        raise SlmError(f"{where}: models must be a list")
    rest = {k: v for k, v in raw.items() if k != "models"}
    cfg = _build(ServeConfig, rest, where)
    cfg.models = []
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            raise SlmError(f"{where}: models[{i}] must be a mapping")
        cfg.models.append(_build(ModelConfig, m, f"{where}: models[{i}]"))
    validate(cfg, where)
    return cfg


def validate(cfg: ServeConfig, where: str = "serve config") -> None:
    names = [m.name for m in cfg.models]
    for m in cfg.models:
        w = f"{where}: model {m.name!r}"
        if not m.name or "/" in m.name or ":" in m.name:
            raise SlmError(f"{where}: every model needs a name without '/' or ':' (got {m.name!r})")
        if names.count(m.name) > 1:
            raise SlmError(f"{where}: two models are named {m.name!r}")
        if m.kind not in KINDS:
            raise SlmError(f"{w}: kind must be one of {', '.join(KINDS)} (got {m.kind!r})")
        if m.kind == "rag":
            if not m.index:
                raise SlmError(f"{w}: a rag model needs an index")
            if not m.generator:
                raise SlmError(f"{w}: a rag model needs a generator (a chat model's name or a model path)")
            gen = cfg.model(m.generator)
            if gen is not None and (gen.kind != "chat" or gen.upstream):
                raise SlmError(f"{w}: its generator {m.generator!r} must be a local chat model")
        elif m.upstream:
            if m.kind != "chat":
                raise SlmError(f"{w}: only chat models can have an upstream")
            if not m.upstream.startswith(("http://", "https://")):
                raise SlmError(f"{w}: upstream must be an http(s) URL like http://127.0.0.1:8001/v1")
        elif not m.path:
            raise SlmError(f"{w}: needs a path (or, for chat, an upstream)")
        if m.max_new_tokens < 1:
            raise SlmError(f"{w}: max_new_tokens must be at least 1")
        if m.chat_template and (m.kind != "chat" or m.upstream):
            raise SlmError(f"{w}: only a local chat model takes a chat_template")
        if m.batching not in ("auto", "continuous", "off"):
            raise SlmError(f"{w}: batching must be auto, continuous or off, not {m.batching!r}")
        if m.slots < 1 or m.slot_tokens < 2:
            raise SlmError(f"{w}: slots must be at least 1 and slot_tokens at least 2")
        from slmforge.infer.engines import BACKENDS, PRECISIONS

        if m.backend not in BACKENDS or m.precision not in PRECISIONS:
            raise SlmError(
                f"{w}: backend must be one of {', '.join(BACKENDS)} and precision one of {', '.join(PRECISIONS)}"
            )
        if m.batch.max_size < 1 or m.batch.max_wait_ms < 0:
            raise SlmError(f"{w}: batch.max_size must be >= 1 and batch.max_wait_ms >= 0")
    lim = cfg.limits
    for name in ("max_body_bytes", "max_messages", "max_content_parts", "max_prompt_chars", "max_stop_chars",
                 "max_tokens", "max_inputs", "rate_per_minute", "burst", "queue_size",
                 "generation_workers"):  # fmt: skip
        if getattr(lim, name) < 1:
            raise SlmError(f"{where}: limits.{name} must be at least 1 (got {getattr(lim, name)})")
    if lim.timeout_s <= 0:
        raise SlmError(f"{where}: limits.timeout_s must be above 0")
    if cfg.audit.retention_days < 0 or cfg.audit.unauthenticated_per_minute < 0:
        raise SlmError(
            f"{where}: audit.retention_days and audit.unauthenticated_per_minute must be 0 or more"
        )
    if not 0 < cfg.port < 65536:
        raise SlmError(f"{where}: port must be 1-65535 (got {cfg.port})")
    bad = [e for e in cfg.auth.open_on_loopback if e not in ENDPOINTS]
    if bad:
        raise SlmError(
            f"{where}: auth.open_on_loopback names unknown endpoints {bad} (known: {', '.join(ENDPOINTS)})"
        )
    if cfg.auth.open_on_loopback and not is_loopback(cfg.host):
        raise SlmError(
            f"{where}: auth.open_on_loopback needs host 127.0.0.1, ::1 or localhost (got {cfg.host}); "
            "a server reachable from other machines requires a key on every endpoint"
        )
    for proxy in cfg.auth.trusted_proxies:
        try:  # as uvicorn parses them: a CIDR with host bits set would silently match nothing there
            ipaddress.ip_network(proxy) if "/" in proxy else ipaddress.ip_address(proxy)
        except ValueError:
            raise SlmError(
                f"{where}: auth.trusted_proxies takes IP addresses or CIDRs like 10.0.0.0/8 (got {proxy!r})"
            ) from None
    if cfg.guard is not None and not isinstance(cfg.guard, dict):
        raise SlmError(f"{where}: guard must be a mapping of guard settings")
    if cfg.pipelines is not None and not isinstance(cfg.pipelines, str | dict):
        raise SlmError(f"{where}: pipelines must be a file path or a mapping")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _build(cls, raw: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise SlmError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(known)})")
    kwargs = {}
    for key, value in raw.items():
        if key in ("auth", "limits", "audit", "batch"):
            sub = {"auth": AuthConfig, "limits": LimitsConfig, "audit": AuditConfig, "batch": BatchConfig}[
                key
            ]
            if not isinstance(value, dict):
                raise SlmError(f"{where}: {key} must be a mapping")
            kwargs[key] = _build(sub, value, f"{where}: {key}")
            continue
        kwargs[key] = _typed(value, known[key], f"{where}: {key}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field missing
        raise SlmError(f"{where}: {str(e).split(': ', 1)[-1]}") from None


def _typed(value, f: dataclasses.Field, where: str):
    """Check a scalar against its field's declared type (the dataclasses here use str/int/float/bool/list)."""
    t = str(f.type)
    if value is None:
        if "None" in t:
            return None
        raise SlmError(f"{where} must not be empty")
    if t.startswith("bool"):
        ok = isinstance(value, bool)
    elif t.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t.startswith("float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif t.startswith("list"):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif t.startswith("str | dict") or t.startswith("dict"):
        ok = isinstance(value, str | dict)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise SlmError(f"{where} has the wrong type ({type(value).__name__}; expected {t})")
    return value


def _near(p: str, base: Path) -> str:
    """A relative path that exists next to the config wins over the same path from the working directory."""
    if not p or Path(p).is_absolute():
        return p
    candidate = base / p
    return str(candidate) if candidate.exists() else p
