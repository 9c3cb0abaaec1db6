"""The right-sizing configs of both families: torch-free, so the CLI builds `slm rightsize` from them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RightsizeConfig:
    data: str
    """Labelled training file.

    What the base trained on; the pruned rungs heal on it."""
    eval_data: str
    """The labelled file the targets are checked on, e.g. the test split."""
    out: str
    """Ladder directory (rerun to resume)."""
    target: str = "accuracy>=0.97*base"
    """Clauses like accuracy>=0.92 or accuracy>=0.97*base, comma-separated.

    Metrics: accuracy, macro_f1, p50_ms, params, disk_mb (see the module docstring)."""
    max_latency_ms: float | None = None
    """Adds p50_ms<=VALUE."""
    base_model: str | None = None
    """A trained classifier to start from.

    Without it one is trained from --base with default settings."""
    base: str = "minilm-l6"
    """Encoder to train the base from (no --base-model)."""
    task: str = "classification"
    """Always classification here (`slmforge.ship.rightsize.generation` is the generation ladder)."""
    layers: list[int] = field(default_factory=lambda: [4, 3, 2])
    """Layer counts of the pruned rungs."""
    int8: bool = True
    """An int8 rung after each model."""
    heal_epochs: int = 3
    """Healing epochs of pruned rungs."""
    tfidf_static: bool = True
    """Also the tfidf and static rungs, trained on --data.

    Below every transformer: --arch tfidf and --arch static (the base's encoder distilled by model2vec)."""
    text_col: str = "text"
    """Text column."""
    label_col: str = "label"
    """Label column."""
    latency_queries: int = 200
    """Single queries timed per rung."""
    threads: int | None = None
    """Compute threads [default: the free cores, never more]."""
    seed: int = 0
    """Seed of the base's training and the rungs' healing."""


@dataclass
class RightsizeGenConfig:
    models: list[str]
    """The ladder, comma-separated (catalog names, dirs, finetune runs).

    Or PEFT adapters; largest first by convention."""
    eval_data: str
    """The prompt/completion JSONL the targets are checked on.

    Prompt/completion (or messages) JSONL or CSV, as for `slm eval`."""
    out: str
    """Ladder directory (rerun to resume).

    ladder.json, report.md, pareto.png, predictions/, tuned/."""
    target: str = "exact_match>=0.97*base"
    """Clauses like exact_match>=0.85 or exact_match>=0.97*base, comma-separated.

    Metrics: exact_match, token_f1, rouge_l, chrf, p50_ms, p95_ms, params, disk_mb, tokens_per_s (see the
    module docstring)."""
    max_latency_ms: float | None = None
    """Adds p50_ms<=VALUE."""
    shots: int = 0
    """Also evaluate each base model K-shot.

    The NAME@Kshot variant."""
    shots_from: str | None = None
    """Where shots come from [--tune-data, else --eval-data].

    From --eval-data, the scored items are left out."""
    zero_shot: bool = True
    """Evaluate base models as they are too."""
    instruction: str | None = None
    """System prompt text."""
    labels_from: str | None = None
    """Allowed answers, listed in the system prompt."""
    text_col: str | None = None
    """Prompt column / JSONL key."""
    label_col: str | None = None
    """Answer column / JSONL key."""
    limit: int | None = None
    """Score a seeded sample of N items."""
    seed: int = 0
    """Seed for --limit, --shots and tuning."""
    max_new_tokens: int = 32
    """Longest answer."""
    backend: str = "auto"
    """auto, ort, torch or llama.cpp.

    PEFT adapters run on torch whatever this says."""
    precision: str = "int8"
    """ort weights: int8, int4 or fp32."""
    chat: bool = True
    """Use the chat template."""
    latency_items: int = 20
    """Items timed one at a time."""
    price_per_hour: float = 0.10
    """Machine USD/hour for the cost per 1,000 requests."""
    isolate: bool = True
    """One fresh process per rung (its own peak memory)."""
    threads: int | None = None
    """Compute threads [default: the free cores, never more]."""
    device: str = "auto"
    """auto, cpu or cuda (the torch backend)."""
    tune_data: str | None = None
    """Also fine-tune every base model on this JSONL.

    And add the tuned rung NAME+METHOD."""
    tune_method: str = "lora"
    """lora or full."""
    tune_minutes: float | None = None
    """Time budget per fine-tune."""
    tune_steps: int | None = None
    """Steps per fine-tune."""
    tune_epochs: float = 1.0
    """Passes over --tune-data per fine-tune (unless --tune-minutes or --tune-steps stop it first)."""
    tune_lr: float | None = None
    """Fine-tuning learning rate."""
    tune_options: dict = field(default_factory=dict)
    """Further `slmforge.lm.finetune.FinetuneConfig` fields for the tuned rungs (seq_len, batch_size, ...)."""
