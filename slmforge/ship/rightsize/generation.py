"""Pick the smallest causal LM that meets the user's targets: `slm rightsize --task generation`.

The ladder is the models given (`models`: catalog names, local model dirs, `slm finetune` run dirs or
PEFT adapters), largest first by convention. Each is a rung in up to three variants, evaluated in this
order ("prompted, then tuned"):

    NAME@Kshot   a base model shown K examples before every prompt (`shots` > 0)
    NAME         a base model as it is, zero-shot (unless `zero_shot` is off); a fine-tuned model given
                 in `models` is only evaluated like this: it learned the task, it needs no shots
    NAME+METHOD  a base model fine-tuned here on `tune_data` (`tune_method` lora or full, for
                 `tune_minutes` / `tune_steps`), run dir `out/tuned/NAME`, evaluated zero-shot

Every rung is scored on `eval_data` by `slmforge.lm.evaluate` (the harness of `slm eval --task generation`:
the engine and greedy decode loop of `slm generate`), with the same instruction, labels, sample
(`limit`, `seed`), `max_new_tokens`, backend and precision for all. PEFT adapters run on torch whatever
`backend` says (ONNX Runtime and llama.cpp need a merged model), and their disk size counts the base
they need. The pick is the smallest rung (params, then disk, then p50 latency) that meets every clause
of `target`.

Targets: the clauses of `slmforge.ship.rightsize.classification.parse_target` over exact_match, token_f1, rouge_l, chrf
(0..1), p50_ms, p95_ms (one request at a time), params, disk_mb and tokens_per_s; `base` is the first
rung evaluated (the first model's first variant), e.g. "exact_match>=0.85" or
"exact_match>=0.95*base,p95_ms<=800".

Output in `out/`: `ladder.json` (the state: every rung's settings and metrics, the table and the pick;
a rerun resumes, and rungs already evaluated with the same settings and eval file are not evaluated
again, so changing only the target re-picks for free), `report.md` (one row per rung), `pareto.png`
(quality against latency and against params) and `predictions/RUNG.jsonl`. The pick is registered in
the workspace.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from slmforge.core.errors import SlmError
from slmforge.ship.rightsize.classification import TASK_METRICS, Clause, parse_target
from slmforge.ship.rightsize.configs import RightsizeGenConfig

METRICS = TASK_METRICS["generation"]
QUALITY = ("exact_match", "token_f1", "rouge_l", "chrf")
TUNE_METHODS = ("lora", "full")
_KEPT = ("exact_match", "token_f1", "rouge_l", "chrf", "tokens_per_s", "params", "disk_mb", "cost_per_1k",
         "peak_rss_mb", "backend", "precision", "items", "shots", "eos_rate", "generated_tokens_mean",
         "seconds", "price_per_hour")  # fmt: skip


@dataclass
class Rung:
    name: str
    model: str
    """What is evaluated: the model as given, or the tuned run dir."""
    variant: str
    """prompted, zero-shot or tuned."""
    shots: int
    tuned_from: str | None = None


def rightsize_generation(cfg: RightsizeGenConfig, progress: bool = True) -> dict:
    from slmforge.core.fsutil import write_json
    from slmforge.core.progress import say

    clauses = parse_target(cfg.target, METRICS)
    if cfg.max_latency_ms is not None:
        clauses.append(Clause("p50_ms", "<=", cfg.max_latency_ms, None))
    _validate(cfg)
    out = Path(cfg.out)
    tuned = {m: _is_tuned(m) for m in cfg.models}
    ladder = _plan(cfg, tuned, out)
    _check_eval_settings(cfg, ladder)  # bad data, shots or labels fail here, before any rung runs
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "ladder.json"
    state = _read_state(state_path)
    state["target"] = [str(c) for c in clauses]
    state["models"] = list(cfg.models)
    started = time.perf_counter()

    for rung in ladder:
        rec = state["rungs"].setdefault(rung.name, {})
        rec.update(model=rung.model, variant=rung.variant, shots=rung.shots, tuned_from=rung.tuned_from)
        if rung.tuned_from:  # tuned here: fine-tune first (or reuse the earlier run)
            try:
                _tune(cfg, rung, rec, progress)
            except SlmError as e:  # the ladder goes on without it
                say(progress, f"[yellow]rung {rung.name} skipped:[/yellow] could not fine-tune: {e}")
                rec.pop("eval", None)
                rec["error"] = f"fine-tuning failed: {e}"
                write_json(state_path, state)
                continue
        settings = _eval_settings(cfg, rung)
        if "eval" in rec and rec.get("settings") == settings:
            say(progress, f"rung {rung.name}: already evaluated (resumed)")
            continue
        say(progress, f"[bold]rung {rung.name}[/bold]: evaluating {rung.model} on {cfg.eval_data}"
                       + (f" ({rung.shots}-shot)" if rung.shots else ""))  # fmt: skip
        try:
            rec["eval"] = _evaluate(cfg, rung, out, progress)
            rec.pop("error", None)
        except SlmError as e:
            say(progress, f"[yellow]rung {rung.name} failed:[/yellow] {e}")
            rec.pop("eval", None)
            rec["error"] = str(e)
        rec["settings"] = settings
        write_json(state_path, state)

    table, base = _table(ladder, state, clauses)
    passing = [t for t in table if t["meets"]]
    pick = min(passing, key=_size_key) if passing else None
    state["pick"] = pick["rung"] if pick else None
    state["base"] = base["rung"] if base else None
    state["table"] = table
    write_json(state_path, state)
    thresholds = {str(c): _threshold(c, base) for c in clauses}
    write_report(out, table, clauses, thresholds, base, pick, cfg)
    if pick:
        _register(pick, cfg, out)
    return {
        "out": str(out),
        "table": table,
        "pick": pick,
        "base": base,
        "targets": [str(c) for c in clauses],
        "thresholds": thresholds,
        "report": str(out / "report.md"),
        "plot": str(out / "pareto.png"),
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------- the ladder


def _validate(cfg: RightsizeGenConfig) -> None:
    from slmforge.infer.engines import BACKENDS, PRECISIONS

    if not cfg.models:
        raise SlmError("give the ladder with --models A,B,C (catalog names, model dirs, finetune runs)")
    if len(set(cfg.models)) != len(cfg.models):
        raise SlmError(f"--models lists a model twice: {', '.join(cfg.models)}")
    for flag, path in (("--eval-data", cfg.eval_data), ("--tune-data", cfg.tune_data),
                       ("--shots-from", cfg.shots_from), ("--labels-from", cfg.labels_from)):  # fmt: skip
        if path is not None and not Path(path).is_file():
            raise SlmError(f"{flag} {path} does not exist")
    if cfg.shots < 0:
        raise SlmError("--shots must be 0 or more")
    if not cfg.shots and not cfg.zero_shot:
        raise SlmError("--no-zero-shot leaves base models no variant: give --shots K too")
    if cfg.tune_method not in TUNE_METHODS:
        raise SlmError(f"--tune-method must be one of {', '.join(TUNE_METHODS)}, not {cfg.tune_method!r}")
    if cfg.tune_minutes is not None and cfg.tune_minutes <= 0:
        raise SlmError("--tune-minutes must be positive")
    if cfg.tune_steps is not None and cfg.tune_steps < 1:
        raise SlmError("--tune-steps must be at least 1")
    if cfg.backend not in BACKENDS:
        raise SlmError(f"unknown backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")
    if cfg.precision not in PRECISIONS:
        raise SlmError(f"unknown precision {cfg.precision!r}; choose one of {', '.join(PRECISIONS)}")
    for m in cfg.models:
        _check_causal(m)


def _check_causal(model: str) -> None:
    from slmforge.core import hub
    from slmforge.infer.model_dirs import output_dir
    from slmforge.lm.evaluate import is_causal_lm

    entry = hub.CATALOG.get(model)
    if entry is not None:
        if entry.kind != "causal-lm":
            raise SlmError(
                f"--models: {model} is an {entry.kind}; rightsize --task classification takes those"
            )
        return
    path = Path(model).expanduser()
    if not path.exists():
        hub.resolve_model(model)  # a hub id passes; anything else is a one-line error naming the choices
        return
    path = output_dir(path) if path.is_dir() else path
    if not (path / "adapter_config.json").exists() and not is_causal_lm(str(path)):
        raise SlmError(
            f"--models: {model} is not a causal LM (no *ForCausalLM config, GGUF file, finetune run or "
            "adapter); rightsize --task classification takes trained classifiers"
        )


def _is_tuned(model: str) -> bool:
    """Whether `model` is already fine-tuned: a finetune run dir, an adapter, or a model finetune wrote."""
    from slmforge.core import workspace
    from slmforge.infer.model_dirs import output_dir

    path = Path(model).expanduser()
    if not path.is_dir():
        return False
    inner = output_dir(path)
    if inner != path or (inner / "adapter_config.json").exists():
        return True
    return "method" in workspace.read_manifest(inner).get("metrics", {})


def _rung_name(model: str, taken: set[str]) -> str:
    path = Path(model).expanduser()
    name = path.name if path.exists() else model.rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"
    if name in ("model", "adapter") and path.exists():  # a run's model/ or adapter/: name it by the run
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.resolve().parent.name) or name
    unique, i = name, 2
    while unique in taken:
        unique, i = f"{name}-{i}", i + 1
    taken.add(unique)
    return unique


def _plan(cfg: RightsizeGenConfig, tuned: dict[str, bool], out: Path) -> list[Rung]:
    """The rungs in evaluation order: every model prompted / as is, then the ones tuned here."""
    taken: set[str] = set()
    names = {m: _rung_name(m, taken) for m in cfg.models}
    rungs, later = [], []
    for m in cfg.models:
        name = names[m]
        if tuned[m]:
            rungs.append(Rung(name, m, "tuned", 0))
            continue
        if cfg.shots:
            rungs.append(Rung(f"{name}@{cfg.shots}shot", m, "prompted", cfg.shots))
        if cfg.zero_shot:
            rungs.append(Rung(name, m, "zero-shot", 0))
        if cfg.tune_data:
            later.append(Rung(f"{name}+{cfg.tune_method}", str(out / "tuned" / name), "tuned", 0, m))
    return rungs + later


def _eval_config(cfg: RightsizeGenConfig, model: str, shots: int):
    from slmforge.ship.evaluate import EvalConfig

    return EvalConfig(
        models=[model], data=[cfg.eval_data], task="generation", threads=cfg.threads, device=cfg.device,
        text_col=cfg.text_col, label_col=cfg.label_col, backend=cfg.backend, precision=cfg.precision,
        max_new_tokens=cfg.max_new_tokens, limit=cfg.limit, seed=cfg.seed, shots=shots,
        shots_from=_shots_from(cfg) if shots else None, instruction=cfg.instruction,
        labels_from=cfg.labels_from, chat=cfg.chat, latency_items=cfg.latency_items,
        price_per_hour=cfg.price_per_hour, isolate=cfg.isolate,
    )  # fmt: skip


def _shots_from(cfg: RightsizeGenConfig) -> str:
    return cfg.shots_from or cfg.tune_data or cfg.eval_data


def _check_eval_settings(cfg: RightsizeGenConfig, ladder: list[Rung]) -> None:
    from slmforge.lm.eval_data import prepare_jobs

    for k in sorted({r.shots for r in ladder}):
        prepare_jobs(_eval_config(cfg, "-", k))


def _eval_settings(cfg: RightsizeGenConfig, rung: Rung) -> dict:
    """What a rung's scores depend on: a rung evaluated with the same settings is not evaluated again."""
    from slmforge.core.fsutil import sha256_file

    def digest(path):
        return sha256_file(path)[:16] if path else None

    return {
        "model": rung.model,
        "eval_data": str(Path(cfg.eval_data).resolve()),
        "eval_data_sha256": digest(cfg.eval_data),
        "shots": rung.shots,
        "shots_from_sha256": digest(_shots_from(cfg)) if rung.shots else None,
        "instruction": cfg.instruction,
        "labels_sha256": digest(cfg.labels_from),
        "text_col": cfg.text_col,
        "label_col": cfg.label_col,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "max_new_tokens": cfg.max_new_tokens,
        "backend": cfg.backend,
        "precision": cfg.precision,
        "chat": cfg.chat,
        "latency_items": cfg.latency_items,
        "price_per_hour": cfg.price_per_hour,
        "tuned": _tune_settings(cfg) if rung.tuned_from else None,
    }


def _read_state(path: Path) -> dict:
    if not path.exists():
        return {"rungs": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise SlmError(f"{path} is not valid JSON: delete it to start the ladder over") from None
    if not isinstance(state, dict) or not isinstance(state.get("rungs"), dict):
        raise SlmError(f"{path} is not a rightsize ladder: delete it to start over")
    return state


# ---------------------------------------------------------------- tuning and scoring one rung


def _tune_settings(cfg: RightsizeGenConfig) -> dict:
    from slmforge.core.fsutil import sha256_file

    return {
        "data_sha256": sha256_file(cfg.tune_data)[:16] if cfg.tune_data else None,
        "method": cfg.tune_method,
        "minutes": cfg.tune_minutes,
        "steps": cfg.tune_steps,
        "epochs": cfg.tune_epochs,
        "lr": cfg.tune_lr,
        "seed": cfg.seed,
        **cfg.tune_options,
    }


def _tune(cfg: RightsizeGenConfig, rung: Rung, rec: dict, progress: bool) -> None:
    """Fine-tune the rung's base into `rung.model` unless an earlier run already did with these settings."""
    from slmforge.core.progress import say
    from slmforge.infer.model_dirs import output_dir
    from slmforge.lm.configs import FinetuneConfig
    from slmforge.lm.finetune import finetune

    run = Path(rung.model)
    settings = _tune_settings(cfg)
    done = output_dir(run) != run
    same = rec.get("tune") == settings
    if done and same:
        say(progress, f"rung {rung.name}: already fine-tuned (resumed)")
        return
    resume = same and (run / "config.json").exists() and not done  # an interrupted run continues
    say(progress, f"[bold]rung {rung.name}[/bold]: fine-tuning {rung.tuned_from} ({cfg.tune_method})"
                   + (", resuming the interrupted run" if resume else ""))  # fmt: skip
    rec.pop("eval", None)
    rec["tune"] = settings
    t0 = time.perf_counter()
    result = finetune(
        FinetuneConfig(
            model=rung.tuned_from, data=cfg.tune_data, out=str(run), method=cfg.tune_method,
            epochs=cfg.tune_epochs, max_steps=cfg.tune_steps, max_minutes=cfg.tune_minutes, lr=cfg.tune_lr,
            threads=cfg.threads, device=cfg.device, seed=cfg.seed, resume=resume, overwrite=not resume,
            **cfg.tune_options,
        ),
        progress,
    )  # fmt: skip
    rec["tune_result"] = {"steps": result.steps, "train_loss": result.train_loss, "model_dir": result.model_dir,
                          "tune_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def _evaluate(cfg: RightsizeGenConfig, rung: Rung, out: Path, progress: bool) -> dict:
    from dataclasses import replace

    from slmforge.core.fsutil import atomic_file
    from slmforge.infer.model_dirs import output_dir
    from slmforge.lm import evaluate as gen_eval
    from slmforge.train.adapters import locate_base

    path = Path(rung.model).expanduser()
    inner = output_dir(path) if path.is_dir() else path
    adapter = (inner / "adapter_config.json").exists()
    ecfg = _eval_config(cfg, rung.model, rung.shots)
    if adapter and cfg.backend not in ("auto", "torch"):
        ecfg = replace(ecfg, backend="torch")  # adapters run on torch only
    (row,) = gen_eval.evaluate_generative(ecfg, progress)
    kept = {k: row.get(k) for k in _KEPT}
    kept["p50_ms"] = row["p50_s"] * 1000
    kept["p95_ms"] = row["p95_s"] * 1000
    if adapter and kept["disk_mb"] is not None:  # serving it takes the base too
        base = Path(locate_base(inner))
        kept["adapter_mb"] = kept["disk_mb"]
        kept["disk_mb"] += gen_eval.disk_mb(base)
    with atomic_file(out / "predictions" / f"{rung.name}.jsonl") as f:
        for p in row.get("predictions", []):
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return kept


# ---------------------------------------------------------------- picking, report, registration


def _holds(c: Clause, row: dict, base: dict | None) -> bool:
    threshold = _threshold(c, base)
    value = row.get(c.metric)
    return value is not None and threshold is not None and c.holds({c.metric: value}, {c.metric: threshold})


def _threshold(c: Clause, base: dict | None) -> float | None:
    if c.value is not None:
        return c.value
    if base is None or base.get(c.metric) is None:
        return None
    return c.factor * base[c.metric]


def _table(ladder: list[Rung], state: dict, clauses: list[Clause]) -> tuple[list[dict], dict | None]:
    rows = []
    for rung in ladder:
        rec = state["rungs"][rung.name]
        row = {"rung": rung.name, "model": rung.model, "variant": rung.variant, "shots": rung.shots,
               "tuned_from": rung.tuned_from}  # fmt: skip
        if "eval" in rec:
            row |= rec["eval"] | {"shots": rung.shots}
        else:
            row["error"] = rec.get("error", "not evaluated")
        rows.append(row)
    base = next((r for r in rows if "error" not in r), None)
    for row in rows:
        if "error" in row:
            row |= {"meets": False, "checks": {str(c): False for c in clauses}}
        else:
            checks = {str(c): _holds(c, row, base) for c in clauses}
            row |= {"meets": all(checks.values()), "checks": checks}
    return rows, base


def _size_key(t: dict) -> tuple:
    def num(v):
        return math.inf if v is None else v

    return (num(t.get("params")), num(t.get("disk_mb")), num(t.get("p50_ms")))


def _quality_metric(clauses: list[Clause]) -> str:
    return next((c.metric for c in clauses if c.metric in QUALITY), "exact_match")


def format_value(v, spec: str) -> str:
    if v is None:
        return "—"
    if spec == "M":  # a parameter count
        return f"{v / 1e9:.2f} B" if v >= 1e9 else f"{v / 1e6:.1f} M" if v >= 1e6 else f"{v / 1e3:.1f} K"
    return format(v, spec)


def write_report(
    out: Path, table: list[dict], clauses: list[Clause], thresholds: dict, base, pick, cfg
) -> None:
    from slmforge.core.fsutil import atomic_file

    def target_text(c: Clause) -> str:
        t = thresholds[str(c)]
        return f"`{c}`" + (f" (= {t:.4g})" if c.value is None and t is not None else "")

    lines = [
        "# Right-sizing report",
        "",
        f"Task: generation. Scored on `{cfg.eval_data}`"
        + (f" (a seeded sample of {cfg.limit})" if cfg.limit else "")
        + f", greedy, at most {cfg.max_new_tokens} new tokens"
        + (f"; fine-tuned on `{cfg.tune_data}` ({cfg.tune_method})" if cfg.tune_data else "")
        + ".",
        "Target: " + ", ".join(target_text(c) for c in clauses) + "."
        + (f" `base` is the first rung, {base['rung']}." if base and any(c.value is None for c in clauses) else ""),
        "",
        "| rung | variant | backend | EM | token F1 | ROUGE-L | chrF | p50 ms | p95 ms | tokens/s | params "
        "| disk MB | $/1k req | meets | pick |",
        "|" + "---|" * 15,
    ]  # fmt: skip
    for t in table:
        variant = f"{t['shots']}-shot" if t["variant"] == "prompted" else t["variant"]
        if t["tuned_from"]:
            variant += f" from {Path(t['tuned_from']).name or t['tuned_from']}"
        picked = "**pick**" if pick and t["rung"] == pick["rung"] else ""
        if "error" in t:
            why = t["error"].replace("|", "\\|")
            lines.append(f"| {t['rung']} | {variant} | " + "— | " * 11 + f"no ({why}) | |")
            continue
        cells = [t["rung"], variant, f"{t['backend']} {t['precision']}", format_value(t["exact_match"], ".3f"),
                 format_value(t["token_f1"], ".3f"), format_value(t["rouge_l"], ".3f"), format_value(t["chrf"], ".3f"),
                 format_value(t["p50_ms"], ".1f"), format_value(t["p95_ms"], ".1f"), format_value(t["tokens_per_s"], ".1f"),
                 format_value(t["params"], "M"), format_value(t["disk_mb"], ".1f"), format_value(t["cost_per_1k"], ".4f"),
                 "yes" if t["meets"] else "no", picked]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if pick:
        q = _quality_metric(clauses)
        lines.append(
            f"Pick: **{pick['rung']}** (`{pick['model']}`"
            + (f", {pick['shots']}-shot prompts" if pick["shots"] else "")
            + f"): {q} {pick[q]:.3f}, p50 {pick['p50_ms']:.1f} ms, {format_value(pick['params'], 'M')} parameters, "
            f"{format_value(pick['disk_mb'], '.1f')} MB on disk: the smallest rung that meets every clause."
        )
    else:
        lines.append(no_pick_message(table))
    lines += [
        "",
        "Latency: one request at a time (p50/p95 over the first items); tokens/s: the batched run; "
        f"cost per 1,000 requests at {cfg.price_per_hour} USD/hour. Metrics: see `slmforge/lm/evaluate.py`. "
        "Predictions: `predictions/RUNG.jsonl`.",
        "",
        "![Pareto plot](pareto.png)",
        "",
    ]
    with atomic_file(out / "report.md") as f:
        f.write("\n".join(lines))
    plot_pareto(table, pick, _quality_metric(clauses), out / "pareto.png")


def no_pick_message(table: list[dict]) -> str:
    evaluated = sum("error" not in t for t in table)
    return (
        f"No rung meets every target ({evaluated} of {len(table)} evaluated): relax the target, add larger "
        "models, or fine-tune the rungs (--tune-data)."
    )


def plot_pareto(table: list[dict], pick, quality: str, png: Path) -> None:
    """Quality against p50 latency and against params; marker per variant, rungs with an error left out."""
    from slmforge.ship.rightsize.plots import plot_pareto as plot

    plot(
        table,
        pick,
        png,
        quality=(quality, f"{quality.replace('_', ' ')} (%)"),
        x_axes=(("p50_ms", "p50 latency, one request (ms)"), ("params", "parameters")),
        title="right-sizing ladder (green: meets the target; circle: pick; ■ k-shot, ● as is, ▲ tuned)",
        style=lambda t: {"marker": {"prompted": "s", "tuned": "^"}.get(t["variant"], "o")},
        ylim=(-5, 105),
    )


def _register(pick: dict, cfg: RightsizeGenConfig, out: Path) -> None:
    from slmforge.core import hub, workspace
    from slmforge.infer.model_dirs import output_dir

    path = Path(pick["model"]).expanduser()
    if not path.exists():
        try:
            path = Path(hub.resolve_model(pick["model"]))
        except SlmError:
            return
        if not path.exists():  # a hub id: nothing local to register
            return
    path = output_dir(path) if path.is_dir() else path
    src = workspace.read_manifest(path) if path.is_dir() else {}
    kind = src.get("kind") or ("adapter" if (path / "adapter_config.json").exists() else "model")
    workspace.register(
        kind,
        path,
        name=src.get("name"),
        source=src.get("source") or pick.get("tuned_from") or f"rightsize:{out}",
        data_hash=src.get("data_hash"),
        metrics={
            **src.get("metrics", {}),
            "rightsize_pick": True,
            "rightsize_task": "generation",
            "rightsize_target": cfg.target,
            "rightsize_ladder": str(out.resolve()),
            "rightsize_rung": pick["rung"],
            "rightsize_shots": pick["shots"],
            **({"rightsize_instruction": cfg.instruction} if cfg.instruction else {}),
            **{k: pick.get(k) for k in METRICS},
        },
    )
