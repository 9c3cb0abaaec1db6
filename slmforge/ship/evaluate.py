"""`slm eval`: evaluate models side by side, offline; this module holds its config and routes each task.

Tasks: `perplexity` of causal LMs (`slmforge.lm.perplexity`); `generation`, and `classification` /
`multiple-choice` by label log-likelihood, for causal LMs with latency, memory and cost next to quality
(`slmforge.lm.evaluate`); `classification` of trained classifiers (`slmforge.clf.evaluate`) when the models
are classifiers rather than causal LMs; `extraction` of entity spans by token classifiers, spaCy
pipelines and causal LMs writing JSON under `--schema` (`slmforge.ship.extraction`). Every task returns one row per (model, data) pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slmforge.core.errors import SlmError

TASKS = ("perplexity", "generation", "classification", "multiple-choice", "extraction")


@dataclass
class EvalConfig:
    models: list[str]
    """Models to compare; the first is the baseline. MODEL@5shot: this model gets 5 shots (overrides --shots).

    Catalog names, local HF dirs or hub ids; the first is the baseline of the change column."""
    data: list[str]
    """Dataset dir (val split), .jsonl, .csv or .txt; repeatable.

    A .jsonl file's text field is scored for perplexity."""
    task: str = "perplexity"
    """perplexity, generation, classification, multiple-choice or extraction.

    extraction: entity spans of token classifiers, spacy:NAME pipelines and causal LMs (JSON under --schema)
    against a span-labelled JSONL."""
    seq_len: int = field(default=512, metadata={"family": "causal LM"})
    """Perplexity: tokens per scored window.

    The windows do not overlap."""
    max_tokens: int = field(default=32768, metadata={"family": "causal LM"})
    """Perplexity: tokens scored per data source.

    The same text for every model."""
    batch_size: int = field(default=4, metadata={"family": "causal LM"})
    """Perplexity: windows per forward pass."""
    threads: int | None = None
    """Compute threads (default: free cores)."""
    device: str = field(default="auto", metadata={"family": "causal LM"})
    """Perplexity: auto, cpu or cuda."""
    text_col: str | None = None
    """Prompt column / JSONL key.

    Classifiers: default the one the model was trained with."""
    label_col: str | None = None
    """Answer / label column / JSONL key.

    Extraction: the key holding the gold spans (default entities)."""
    report_dir: str | None = field(default=None, metadata={"family": "classifier"})
    """Classifiers: write metrics, per-class report, confusion.png here.

    One subdir per (model, data) row: metrics.json, per_class.json, confusion.png."""
    unseen_as_oos: bool = field(default=False, metadata={"family": "classifier"})
    """Classifiers: score labels the model never saw as `oos`.

    Instead of refusing the file."""
    latency_queries: int = field(default=200, metadata={"family": "classifier"})
    """Classifiers: single queries timed for p50/p95."""
    spacy_labels: str | None = field(default=None, metadata={"family": "classifier"})
    """Extraction: spaCy label -> file label, e.g. ORG=MERCHANT,DATE.

    Default: PERSON, ORG, GPE/LOC/FAC -> LOCATION, DATE, MONEY, PRODUCT; unmapped labels are dropped."""
    schema: str | None = None
    """Extraction: entity schema JSON of a causal LM (from `slm data entities-to-sft`).

    Default: one array of strings per label of the data file, sorted (what the converter writes)."""
    # causal-LM tasks (generation, classification / multiple-choice by log-likelihood): see gen_eval
    backend: str = field(default="auto", metadata={"family": "causal LM"})
    """Generation: auto, ort, torch or llama.cpp.

    auto: ONNX Runtime GenAI on CPU."""
    precision: str = field(default="int8", metadata={"family": "causal LM"})
    """ort weights: int8, int4 or fp32."""
    max_new_tokens: int = field(default=32, metadata={"family": "causal LM"})
    """Generation: longest answer (extraction: at least 256 tokens)."""
    limit: int | None = field(default=None, metadata={"family": "causal LM"})
    """Evaluate a seeded sample of N items.

    Per data file."""
    seed: int = field(default=0, metadata={"family": "causal LM"})
    """Seed for --limit and --shots."""
    shots: int = field(default=0, metadata={"family": "causal LM"})
    """Examples shown before each prompt (needs --shots-from)."""
    shots_from: str | None = field(default=None, metadata={"family": "causal LM"})
    """File the shots are drawn from.

    Seeded; shown as earlier user/assistant turns."""
    instruction: str | None = field(default=None, metadata={"family": "causal LM"})
    """System prompt text."""
    labels_from: str | None = field(default=None, metadata={"family": "causal LM"})
    """Allowed labels (.json list, .txt, or a labelled .csv/.jsonl).

    Listed in the system prompt and, for classification, the candidates scored."""
    constrain: bool = field(default=False, metadata={"family": "causal LM"})
    """Classification: generate each answer on --backend under a choice constraint over the labels.

    Instead of scoring every label's likelihood on torch; accuracy is then the exact match of the
    constrained reply (slmforge.lm.evaluate)."""
    chat: bool = field(default=True, metadata={"family": "causal LM"})
    """Use the tokenizer's chat template."""
    latency_items: int = field(default=20, metadata={"family": "causal LM"})
    """Items timed one at a time for p50/p95.

    One request at a time, for the batched backends too."""
    gen_batch_size: int = field(default=16, metadata={"family": "causal LM"})
    """Equal-length prompts decoded together on the ort backend."""
    price_per_hour: float = field(default=0.10, metadata={"family": "causal LM"})
    """Machine price (USD/hour) for the cost per 1,000 requests.

    The default is a small 2-vCPU cloud VM."""
    isolate: bool = field(default=True, metadata={"family": "causal LM"})
    """One fresh process per model (its own peak memory)."""


def evaluate(cfg: EvalConfig, progress: bool = True) -> list[dict]:
    """Validate `cfg` and run its task with the family's evaluation (see the module doc)."""
    from slmforge.lm.evaluate import evaluate_generative, is_causal_lm
    from slmforge.lm.perplexity import evaluate_perplexity

    _validate(cfg)
    if cfg.task == "extraction":
        return _evaluate_extraction(cfg, progress)
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


def _evaluate_extraction(cfg: EvalConfig, progress: bool) -> list[dict]:
    """One row per (extractor, span-labelled file): see `slmforge.ship.extraction`."""
    from slmforge.ship.extraction import evaluate_extraction

    return [
        evaluate_extraction(
            name,
            data,
            text_col=cfg.text_col,
            entities_col=cfg.label_col,
            spacy_labels=cfg.spacy_labels,
            latency_queries=cfg.latency_queries,
            threads=cfg.threads,
            progress=progress,
            schema=cfg.schema,
            backend=cfg.backend,
            precision=cfg.precision,
            max_new_tokens=max(cfg.max_new_tokens, 256),  # a reply holds every label of the schema
        )  # fmt: skip
        for name in cfg.models
        for data in cfg.data
    ]


def _validate(cfg: EvalConfig) -> None:
    if cfg.task not in TASKS:
        raise SlmError(f"unknown task {cfg.task!r}; this version evaluates: {', '.join(TASKS)}")
    if not cfg.models:
        raise SlmError("give at least one model to evaluate")
    if cfg.constrain and cfg.task != "classification":
        raise SlmError("--constrain is for --task classification (the labels become a choice constraint)")
    if not cfg.data:
        raise SlmError("give at least one --data source (dataset dir, .jsonl, .csv or .txt)")
    if cfg.seq_len < 2 or cfg.max_tokens < cfg.seq_len or cfg.batch_size < 1:
        raise SlmError("need --seq-len ≥ 2, --max-tokens ≥ --seq-len and --batch-size ≥ 1")
