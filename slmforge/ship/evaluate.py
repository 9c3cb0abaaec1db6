"""`slm eval`: evaluate models side by side, offline; this module holds its config and routes each task.

Tasks: `perplexity` of causal LMs (`slmforge.lm.perplexity`); `generation`, and `classification` /
`multiple-choice` by label log-likelihood, for causal LMs with latency, memory and cost next to quality
(`slmforge.lm.evaluate`); `classification` of trained classifiers (`slmforge.clf.evaluate`) when the models
are classifiers rather than causal LMs. Every task returns one row per (model, data) pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slmforge.core.errors import SlmError

TASKS = ("perplexity", "generation", "classification", "multiple-choice")


@dataclass
class EvalConfig:
    models: list[str]
    """Models: catalog names, local HF dirs or hub ids. The first is the baseline for the change column."""
    data: list[str] = field(default_factory=list)
    """Dataset dirs (val split), .jsonl (text field) or .txt files."""
    task: str = "perplexity"
    seq_len: int = 512
    """Tokens per scored window (non-overlapping)."""
    max_tokens: int = 32768
    """Score at most this many tokens per data source (the same text for every model)."""
    batch_size: int = 4
    threads: int | None = None
    device: str = "auto"
    text_col: str | None = None
    """Classification: the text column (default: the one the model was trained with)."""
    label_col: str | None = None
    report_dir: str | None = None
    """Classification: write metrics.json, per_class.json and confusion.png here (one subdir per row)."""
    unseen_as_oos: bool = False
    """Classification: score labels the model never saw as out-of-scope instead of refusing the file."""
    latency_queries: int = 200
    """Classification: single queries timed for the p50 / p95 latency."""
    # causal-LM tasks (generation, classification / multiple-choice by log-likelihood): see gen_eval
    backend: str = "auto"
    """Generation engine: auto (ONNX Runtime GenAI on CPU), ort, torch or llama.cpp."""
    precision: str = "int8"
    """The ort backend's weights: int8, int4 or fp32."""
    max_new_tokens: int = 32
    limit: int | None = None
    """Evaluate a seeded sample of this many items per data file."""
    seed: int = 0
    shots: int = 0
    shots_from: str | None = None
    """File the `shots` examples are drawn from (seeded), shown as earlier user/assistant turns."""
    instruction: str | None = None
    """System prompt text."""
    labels_from: str | None = None
    """Allowed labels (.json list, .txt lines, or a labelled .csv/.jsonl): listed in the system prompt and,
    for classification, the candidates scored."""
    chat: bool = True
    latency_items: int = 20
    """Items timed one request at a time for p50 / p95 latency (batched backends)."""
    gen_batch_size: int = 16
    """Equal-length prompts decoded together on the ort backend."""
    price_per_hour: float = 0.10
    """USD per hour of the machine (default: a small 2-vCPU cloud VM), for the cost per 1,000 requests."""
    isolate: bool = True
    """Run each model in a fresh process, so its peak memory is its own."""


def evaluate(cfg: EvalConfig, progress: bool = True) -> list[dict]:
    """Validate `cfg` and run its task with the family's evaluation (see the module doc)."""
    from slmforge.lm.evaluate import evaluate_generative, is_causal_lm
    from slmforge.lm.perplexity import evaluate_perplexity

    _validate(cfg)
    if cfg.task == "classification" and not all(is_causal_lm(m) for m in cfg.models):
        return _evaluate_classification(cfg, progress)
    if cfg.task != "perplexity":
        return evaluate_generative(cfg, progress)
    return evaluate_perplexity(cfg, progress)


def _evaluate_classification(cfg: EvalConfig, progress: bool) -> list[dict]:
    """One row per (classifier, labelled file): see `slmforge.clf.evaluate.evaluate_classifier`."""
    from slmforge.clf.evaluate import evaluate_classifier

    rows = []
    for name in cfg.models:
        for data in cfg.data:
            report = None
            if cfg.report_dir:
                report = str(Path(cfg.report_dir) / f"{Path(name).name}-{Path(data).stem}")
            rows.append(
                evaluate_classifier(
                    name,
                    data,
                    text_col=cfg.text_col,
                    label_col=cfg.label_col,
                    report_dir=report,
                    unseen_as_oos=cfg.unseen_as_oos,
                    latency_queries=cfg.latency_queries,
                    batch_size=64,  # throughput is reported for batches of 64
                    threads=cfg.threads,
                    progress=progress,
                )
            )
    return rows


def _validate(cfg: EvalConfig) -> None:
    if cfg.task not in TASKS:
        raise SlmError(f"unknown task {cfg.task!r}; this version evaluates: {', '.join(TASKS)}")
    if not cfg.models:
        raise SlmError("give at least one model to evaluate")
    if not cfg.data:
        raise SlmError("give at least one --data source (dataset dir, .jsonl, .csv or .txt)")
    if cfg.seq_len < 2 or cfg.max_tokens < cfg.seq_len or cfg.batch_size < 1:
        raise SlmError("need --seq-len ≥ 2, --max-tokens ≥ --seq-len and --batch-size ≥ 1")
