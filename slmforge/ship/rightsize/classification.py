"""Pick the smallest model that meets the user's targets: `slm rightsize --task classification`.

"Start big and work down the sizes until quality drops", automated. The ladder, each rung a model
directory under `out/`:

    base            the classifier given with --base-model (or trained here from --base)
    base-int8       its ONNX Runtime int8 version
    layers-N        pruned to N encoder layers, vocabulary trimmed, healed by distillation (N from --layers)
    layers-N-int8   its int8 version
    tfidf           `slm classify train --arch tfidf` on the same data (no transformer at all)
    static          `--arch static`: the base's encoder distilled by model2vec into a token table + a head

Every rung is evaluated on `eval_data` (accuracy, macro-F1, p50 latency, params, disk size); the
pick is the smallest (params, then disk, then latency) that meets every clause of `target`. Rungs
already built and evaluated (recorded in `out/ladder.json`) are not rebuilt: rerunning resumes. The
report is `out/report.md` plus `out/pareto.png` (quality against latency and size); the pick is
registered in the workspace.

Targets: comma-separated clauses `METRIC OP VALUE`, METRIC one of accuracy, macro_f1, p50_ms,
params, disk_mb; OP one of >= <= > <; VALUE a number, `base`, or `NUMBER*base` (relative to the
base rung), e.g. "accuracy>=0.97*base" or "accuracy>=0.92,p50_ms<=5".

`--task generation` (a ladder of causal LMs, prompted and fine-tuned) is `slmforge.ship.rightsize.generation`; it
shares `parse_target` with its own metric set (`TASK_METRICS`).
"""

from __future__ import annotations

import json
import operator
import re
import time
from dataclasses import dataclass
from pathlib import Path

from slmforge.core.errors import SlmError
from slmforge.ship.rightsize.configs import RightsizeConfig

METRICS = ("accuracy", "macro_f1", "p50_ms", "params", "disk_mb")
TASK_METRICS = {
    "classification": METRICS,
    "generation": (
        "exact_match",
        "token_f1",
        "rouge_l",
        "chrf",
        "p50_ms",
        "p95_ms",
        "params",
        "disk_mb",
        "tokens_per_s",
    ),
}
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_CLAUSE = re.compile(
    r"^\s*(?P<metric>[a-z_0-9]+)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?:(?P<factor>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*\*\s*base|(?P<base>base)|(?P<value>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?))\s*$"
)


@dataclass
class Clause:
    metric: str
    op: str
    value: float | None  # absolute value, or None when relative
    factor: float | None  # x base

    def threshold(self, base: dict) -> float:
        return self.value if self.value is not None else self.factor * base[self.metric]

    def holds(self, row: dict, base: dict) -> bool:
        return _OPS[self.op](row[self.metric], self.threshold(base))

    def __str__(self) -> str:
        rhs = f"{self.value:g}" if self.value is not None else f"{self.factor:g}*base"
        return f"{self.metric}{self.op}{rhs}"


def parse_target(expr: str, metrics: tuple[str, ...] = METRICS) -> list[Clause]:
    """'accuracy>=0.97*base, p50_ms<=5' -> clauses over `metrics`; a one-line SlmError for anything else."""
    example = f"e.g. '{metrics[0]}>=0.92' or '{metrics[0]}>=0.97*base,p50_ms<=5'"
    clauses = []
    if not expr or not expr.strip():
        raise SlmError(f"--target is empty; {example}")
    for part in expr.split(","):
        m = _CLAUSE.match(part)
        if not m:
            raise SlmError(f"cannot parse --target clause {part.strip()!r}; {example}")
        if m["metric"] not in metrics:
            raise SlmError(f"--target: unknown metric {m['metric']!r}; known: {', '.join(metrics)}")
        factor = float(m["factor"]) if m["factor"] else (1.0 if m["base"] else None)
        clauses.append(Clause(m["metric"], m["op"], float(m["value"]) if m["value"] else None, factor))
    return clauses


def rightsize(cfg: RightsizeConfig, progress: bool = True) -> dict:
    from slmforge.clf.compress import CompressConfig, prune
    from slmforge.clf.configs import ClassifyTrainConfig
    from slmforge.clf.evaluate import evaluate_classifier
    from slmforge.clf.train import train_classifier
    from slmforge.core import workspace
    from slmforge.core.fsutil import write_json
    from slmforge.core.progress import say
    from slmforge.ship.quantize import QuantizeConfig, quantize

    if cfg.task != "classification":
        raise SlmError(f"rightsize supports --task classification in this version, not {cfg.task!r}")
    clauses = parse_target(cfg.target)
    if cfg.max_latency_ms is not None:
        clauses.append(Clause("p50_ms", "<=", cfg.max_latency_ms, None))
    if any(n < 1 for n in cfg.layers):
        raise SlmError("--layers must be positive layer counts, e.g. 4,3,2")
    for f in (cfg.data, cfg.eval_data):
        if not Path(f).is_file():
            raise SlmError(f"data file {f} does not exist")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "ladder.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"rungs": {}}
    state["target"] = [str(c) for c in clauses]
    started = time.perf_counter()

    def build(name: str, make) -> Path | None:
        """The rung's directory, built unless it already is; None when building it failed verification."""
        path = out / name
        if state["rungs"].get(name, {}).get("skipped"):
            say(progress, f"rung {name}: skipped in an earlier run ({state['rungs'][name]['skipped']})")
            return None
        if not (path / workspace.MANIFEST).exists():
            say(progress, f"[bold]rung {name}[/bold]: building")
            t0 = time.perf_counter()
            try:
                make(path)
            except SlmError as e:  # e.g. an int8 model that drifts from fp32: the ladder goes on without it
                say(progress, f"[yellow]rung {name} skipped:[/yellow] {e}")
                state["rungs"][name] = {"skipped": str(e)}
                write_json(state_path, state)
                return None
            state["rungs"].setdefault(name, {})["build_seconds"] = round(time.perf_counter() - t0, 1)
            state["rungs"][name].pop("eval", None)
            write_json(state_path, state)
        return path

    def score(name: str, path: Path, base_name: str | None) -> dict:
        row = state["rungs"].setdefault(name, {})
        if "eval" not in row:
            say(progress, f"[bold]rung {name}[/bold]: evaluating on {cfg.eval_data}")
            r = evaluate_classifier(
                str(path),
                cfg.eval_data,
                text_col=cfg.text_col,
                label_col=cfg.label_col,
                latency_queries=cfg.latency_queries,
                threads=cfg.threads,
            )
            row["eval"] = {
                k: r[k] for k in ("accuracy", "macro_f1", "p50_ms", "p95_ms", "params", "disk_mb", "runtime")
            }
            row["path"] = str(path)
            row["from"] = base_name
            write_json(state_path, state)
        else:
            say(progress, f"rung {name}: already built and evaluated (resumed)")
        return row["eval"]

    # the base rung
    if cfg.base_model:
        base_path = Path(cfg.base_model)
        if (
            not (base_path / "classifier.json").exists()
            or (base_path / "model.onnx").exists()
            or json.loads((base_path / "classifier.json").read_text()).get("arch") == "tfidf"
        ):
            raise SlmError(
                f"--base-model {cfg.base_model} is not a torch classifier from `slm classify train` "
                "(a tfidf or ONNX model cannot be pruned; give the encoder it came from)"
            )
    else:
        base_path = build(
            "base",
            lambda p: train_classifier(
                ClassifyTrainConfig(
                    data=cfg.data,
                    out=str(p),
                    text_col=cfg.text_col,
                    label_col=cfg.label_col,
                    base=cfg.base,
                    seed=cfg.seed,
                    threads=cfg.threads,
                    ship_baseline=False,  # the ladder prunes and quantizes this rung: it must be the encoder
                    few_shot_below=0,  # and validated on the split the pruned rungs heal with
                ),
                progress,
            ),
        )
        if base_path is None:
            raise SlmError(f"could not train the base rung: {state['rungs']['base']['skipped']}")
    rows = {"base": score("base", base_path, None)}
    ladder = [("base", base_path)]
    if cfg.int8:
        q = build("base-int8", lambda p: quantize(QuantizeConfig(model=str(base_path), out=str(p))))
        if q:
            rows["base-int8"] = score("base-int8", q, "base")
            ladder.append(("base-int8", q))
    for n in sorted(set(cfg.layers), reverse=True):
        name = f"layers-{n}"
        path = build(
            name,
            lambda p, n=n: prune(
                CompressConfig(
                    teacher=str(base_path),
                    data=cfg.data,
                    out=str(p),
                    layers=n,
                    epochs=cfg.heal_epochs,
                    text_col=cfg.text_col,
                    label_col=cfg.label_col,
                    seed=cfg.seed,
                    threads=cfg.threads,
                ),
                progress,
            ),
        )
        if path is None:
            continue
        rows[name] = score(name, path, "base")
        ladder.append((name, path))
        if cfg.int8:
            qn = f"{name}-int8"
            qp = build(qn, lambda p, path=path: quantize(QuantizeConfig(model=str(path), out=str(p))))
            if qp:
                rows[qn] = score(qn, qp, name)
                ladder.append((qn, qp))

    if cfg.tfidf_static:  # the rungs below any transformer, trained on the same data
        encoder = cfg.base
        if cfg.base_model:
            encoder = json.loads((base_path / "classifier.json").read_text()).get("base") or cfg.base
        for arch in ("tfidf", "static"):
            path = build(
                arch,
                lambda p, arch=arch: train_classifier(
                    ClassifyTrainConfig(
                        data=cfg.data,
                        out=str(p),
                        text_col=cfg.text_col,
                        label_col=cfg.label_col,
                        arch=arch,
                        base=encoder,
                        seed=cfg.seed,
                        threads=cfg.threads,
                    ),
                    progress,
                ),
            )
            if path is not None:
                rows[arch] = score(arch, path, None)
                ladder.append((arch, path))

    base = rows["base"]
    table = []
    for name, path in ladder:
        r = rows[name]
        checks = {str(c): c.holds(r, base) for c in clauses}
        table.append({"rung": name, "path": str(path), **r, "meets": all(checks.values()), "checks": checks})
    passing = [t for t in table if t["meets"]]
    pick = min(passing, key=lambda t: (t["params"], t["disk_mb"], t["p50_ms"])) if passing else None
    state["pick"] = pick["rung"] if pick else None
    state["table"] = table
    write_json(state_path, state)
    write_report(out, table, clauses, base, pick, cfg)
    if pick:
        src = workspace.read_manifest(pick["path"])
        workspace.register(
            "model",
            pick["path"],
            source=src.get("source") or f"rightsize:{out}",
            data_hash=src.get("data_hash"),
            metrics={
                **src.get("metrics", {}),
                "rightsize_pick": True,
                "rightsize_target": cfg.target,
                **{k: pick[k] for k in ("accuracy", "macro_f1", "p50_ms", "params", "disk_mb")},
            },
        )
    return {
        "out": str(out),
        "table": table,
        "pick": pick,
        "targets": [str(c) for c in clauses],
        "thresholds": {str(c): c.threshold(base) for c in clauses},
        "report": str(out / "report.md"),
        "plot": str(out / "pareto.png"),
        "seconds": time.perf_counter() - started,
    }


def write_report(out: Path, table: list[dict], clauses: list[Clause], base: dict, pick, cfg) -> None:
    from slmforge.core.fsutil import atomic_file

    lines = [
        "# Right-sizing report",
        "",
        f"Task: classification. Trained on `{cfg.data}`, scored on `{cfg.eval_data}`.",
        "Target: " + ", ".join(f"`{c}` (= {c.threshold(base):.4g})" for c in clauses) + ".",
        "",
        "| rung | runtime | params | disk MB | accuracy | macro-F1 | p50 ms | meets target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        mark = "**pick**" if pick and t["rung"] == pick["rung"] else ("yes" if t["meets"] else "no")
        lines.append(
            f"| {t['rung']} | {t['runtime']} | {t['params'] / 1e6:.2f} M | {t['disk_mb']:.1f} | "
            f"{t['accuracy'] * 100:.2f} % | {t['macro_f1'] * 100:.2f} % | {t['p50_ms']:.3g} | {mark} |"
        )
    lines.append("")
    if pick:
        lines.append(
            f"Pick: **{pick['rung']}** (`{pick['path']}`): {pick['params'] / base['params'] * 100:.0f} % of the "
            f"base's parameters, accuracy {pick['accuracy'] * 100:.2f} % vs {base['accuracy'] * 100:.2f} %, "
            f"p50 {pick['p50_ms']:.3g} ms vs {base['p50_ms']:.3g} ms."
        )
    else:
        lines.append("No rung meets every target: relax the target or add larger rungs.")
    lines += ["", "![Pareto plot](pareto.png)", ""]
    with atomic_file(out / "report.md") as f:
        f.write("\n".join(lines))
    plot_pareto(table, pick, out / "pareto.png")


def plot_pareto(table: list[dict], pick, png: Path) -> None:
    """Accuracy against p50 latency and against disk size; marker area ~ params."""
    from slmforge.ship.rightsize.plots import plot_pareto as plot

    plot(
        table,
        pick,
        png,
        quality=("accuracy", "accuracy (%)"),
        x_axes=(("p50_ms", "p50 latency, one query (ms)"), ("disk_mb", "size on disk (MB)")),
        title="right-sizing ladder (green: meets the target; circle: pick; marker area ~ params)",
        style=lambda t: {"s": 30 + t["params"] / 2e5, "alpha": 0.7},
        always_log=True,
    )
