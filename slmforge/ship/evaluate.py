"""Evaluate models side by side, offline.

Tasks: `perplexity` (below); `generation`, and `classification` / `multiple-choice` by label
log-likelihood, for causal LMs with latency, memory and cost next to quality (`slmforge.lm.evaluate`);
`classification` of a trained classifier (`slmforge.clf.classify.evaluate_classifier`) when the models are
classifiers rather than causal LMs.

Task `perplexity`: held-out loss, perplexity and bits per byte on text.

`evaluate(cfg)` loads each model once, scores each data source with it, and returns one row per
(model, data) pair; the first model is the baseline that the others' perplexity change is measured
against. Data is a dataset dir from `slm data ingest` (its val split), a .jsonl file (the `text`
field) or a .txt file. Bits per byte uses the UTF-8 bytes behind the scored tokens, so models with
different tokenizers compare fairly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    from slmforge.core.runtime import pick_device, set_threads
    from slmforge.lm.evaluate import evaluate_generative, is_causal_lm

    _validate(cfg)
    if cfg.task == "classification" and not all(is_causal_lm(m) for m in cfg.models):
        return _evaluate_classification(cfg, progress)
    if cfg.task != "perplexity":
        return evaluate_generative(cfg, progress)
    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    texts = {d: _read_texts(d) for d in cfg.data}
    rows = []
    for name in cfg.models:
        model, tokenizer = _load(name, device)
        for data, docs in texts.items():
            t0 = time.perf_counter()
            m = perplexity(
                model, tokenizer, docs, cfg.seq_len, cfg.max_tokens, cfg.batch_size, device, progress
            )
            rows.append({"model": name, "data": data, **m, "seconds": time.perf_counter() - t0})
        del model
    for row in rows:
        base = next(r for r in rows if r["data"] == row["data"])
        row["perplexity_change"] = row["perplexity"] / base["perplexity"] - 1
    return rows


def perplexity(
    model,
    tokenizer,
    docs: list[str],
    seq_len: int,
    max_tokens: int,
    batch_size: int,
    device,
    progress: bool = False,
) -> dict:
    """Loss over non-overlapping windows of the documents joined by EOS; bits per byte from the scored tokens."""
    import torch
    import torch.nn.functional as F

    from slmforge.core.progress import bar
    from slmforge.data.tokenizer import token_byte_lengths

    ids = _token_stream(tokenizer, docs, max_tokens + 1)
    n_windows = (len(ids) - 1) // seq_len
    if n_windows == 0:
        raise SlmError(f"the data holds fewer than {seq_len + 1} tokens; lower --seq-len")
    byte_len = token_byte_lengths(tokenizer, size=max(len(tokenizer), int(ids.max()) + 1))
    nats, tokens, nbytes = 0.0, 0, 0
    model.eval()
    with torch.no_grad(), bar("perplexity", total=n_windows, enabled=progress) as b:
        for start in range(0, n_windows, batch_size):
            rows = [
                ids[i * seq_len : i * seq_len + seq_len + 1]
                for i in range(start, min(n_windows, start + batch_size))
            ]
            batch = torch.from_numpy(np.stack(rows)).to(device)
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            targets = batch[:, 1:]
            nats += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
            tokens += targets.numel()
            nbytes += int(byte_len[targets.cpu().numpy()].sum())
            b.advance(len(rows))
    loss = nats / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bpb": nats / math.log(2) / max(nbytes, 1),
        "tokens": tokens,
    }


def _evaluate_classification(cfg: EvalConfig, progress: bool) -> list[dict]:
    """One row per (classifier, labelled file): see `slmforge.clf.classify.evaluate_classifier`."""
    from slmforge.clf.classify import evaluate_classifier

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


def _read_texts(data: str) -> list[str]:
    path = Path(data)
    if path.is_dir():
        path = path / "val.jsonl"
        if not path.exists():
            raise SlmError(f"{data} has no val.jsonl (make it with `slm data ingest --val-fraction`)")
    if not path.exists():
        raise SlmError(f"data {data} does not exist")
    try:
        if path.suffix == ".jsonl":
            docs = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        docs.append(json.loads(line)["text"])
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise SlmError(f"{path}:{i} is not a JSON object with a 'text' field") from e
        else:
            docs = [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError as e:
        raise SlmError(f"{path} is not UTF-8 text") from e
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise SlmError(f"{path} holds no text")
    return docs


def _token_stream(tokenizer, docs: list[str], limit: int) -> np.ndarray:
    eos = tokenizer.eos_token_id
    out: list[int] = []
    for doc in docs:
        out.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            out.append(eos)
        if len(out) >= limit:
            break
    return np.asarray(out[:limit], dtype=np.int64)


def _load(name: str, device):
    from slmforge.infer.model_dirs import load

    return load(name, device=str(device))
