"""Entity extraction with an encoder: `slm classify train --task tokens`, and the spans it predicts.

`train_token_classifier(cfg)` reads a span-labelled JSONL file (`slmforge.data.entities`), holds out a
seeded share of its sentences for validation (or reads `--val`), and then, in order:

1. splits each text into words (runs of letters and digits, or one other character: `£45.20` is `£`,
   `45`, `.`, `20`) that the fast tokenizer reads pre-split, and tags each word with BIO tags (`B-PERSON`,
   `I-PERSON`, `O`, ...) on its first sub-word; the loss ignores the other sub-words and the special
   tokens. A span whose edge falls inside a word (`EUR45`) is learnt as the whole words it touches, and
   counted;
2. fine-tunes `BertForTokenClassification` on the base encoder: AdamW, layer-wise learning-rate decay,
   warmup then linear decay, length-bucketed batches with dynamic padding; after each epoch the
   validation sentences are decoded to spans and scored (exact-span micro-F1), the best epoch kept, and
   training stops early after `patience` epochs without a better one;
3. saves an HF directory that `AutoModelForTokenClassification` loads as it is (id2label holds the BIO
   tags), its tokenizer, `classifier.json` (task `tokens`, entity labels, max length) and
   `train_log.jsonl`, and registers it in the workspace.

`TokenClassifier` runs such a directory on texts of any length, in overlapping windows of `max_len`
tokens, and returns character spans of the original text. ONNX export and int8 are not there yet: their
verification compares one row of logits per text, a tagger has one per token (`slm export` says so).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from slmforge.clf.configs import TokenTrainConfig
from slmforge.clf.io import META, dir_size, encoder_config, first_line
from slmforge.clf.tuning import length_bucketed_batches, param_groups, seed_everything
from slmforge.core.errors import SlmError
from slmforge.core.progress import bar, say
from slmforge.data.entities import Record, Span, read_entities, span_scores

IGNORE = -100  # the label torch's cross-entropy skips: later sub-words, special tokens, padding


@dataclass
class TokenClassifyResult:
    model_dir: str
    labels: list[str]
    params: int
    train_examples: int
    val_examples: int
    val_micro_f1: float
    val_precision: float
    val_recall: float
    misaligned_spans: int
    best_epoch: int
    epochs_run: int
    elapsed_s: float


def train_token_classifier(cfg: TokenTrainConfig, progress: bool = True) -> TokenClassifyResult:
    """Train an entity tagger as described in the module docstring; return where it went and how it did."""
    from slmforge.core import workspace
    from slmforge.core.fsutil import atomic_dir, sha256_file, write_json
    from slmforge.core.runtime import set_threads

    started = time.perf_counter()
    _validate(cfg)
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite and any(out.iterdir()):
        raise SlmError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
    threads = set_threads(cfg.threads)
    train, val = _read_splits(cfg)
    labels = cfg.labels or sorted({s.label for r in train for s in r.spans})
    if not labels:
        raise SlmError(f"{cfg.data} has no entity spans to learn from")
    tags = bio_tags(labels)

    seed_everything(cfg.seed)
    model, tokenizer = build_tagger(cfg.base, tags)
    tag_id = {t: i for i, t in enumerate(tags)}
    encoded = [encode(tokenizer, r.text, r.spans, cfg.max_len, tag_id) for r in train]
    misaligned = sum(e[2] for e in encoded)
    if misaligned:
        say(progress, f"{misaligned} spans do not start or end on a word boundary: learnt as whole words")
    log: list[dict] = []
    best_epoch, epochs_run, best = fine_tune_tokens(
        model, tokenizer, [(e[0], e[1]) for e in encoded], val, tags, cfg, log, progress
    )

    params = sum(p.numel() for p in model.parameters())
    meta = {
        "task": "tokens",
        "labels": labels,
        "tags": tags,
        "max_len": cfg.max_len,
        "text_col": cfg.text_col,
        "entities_col": cfg.entities_col,
        "base": cfg.base,
        "params": params,
        "config": asdict(cfg),
    }
    micro = best.get("micro", {})
    metrics = {
        "params": params,
        "val_micro_f1": micro.get("f1", float("nan")),
        "train_examples": len(train),
        "val_examples": len(val),
        "misaligned_spans": misaligned,
        "best_epoch": best_epoch,
        "train_seconds": round(time.perf_counter() - started, 1),
        "threads": threads,
    }
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / META, meta)
        with open(tmp / "train_log.jsonl", "w", encoding="utf-8") as f:
            for row in log:
                f.write(json.dumps(row) + "\n")
    workspace.register(
        "model", out, source=f"classify-tokens:{cfg.base}", data_hash=sha256_file(cfg.data), metrics=metrics
    )
    return TokenClassifyResult(
        model_dir=str(out),
        labels=labels,
        params=params,
        train_examples=len(train),
        val_examples=len(val),
        val_micro_f1=micro.get("f1", float("nan")),
        val_precision=micro.get("precision", float("nan")),
        val_recall=micro.get("recall", float("nan")),
        misaligned_spans=misaligned,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        elapsed_s=time.perf_counter() - started,
    )


def _read_splits(cfg: TokenTrainConfig) -> tuple[list[Record], list[Record]]:
    """Training and validation records: `--val`, or a seeded `val_fraction` of `data` held out."""
    records = read_entities(cfg.data, cfg.text_col, cfg.entities_col, cfg.labels, cfg.encoding)
    if cfg.val:
        known = cfg.labels or sorted({s.label for r in records for s in r.spans})
        val = read_entities(cfg.val, cfg.text_col, cfg.entities_col, known, cfg.encoding)
        return records, val
    order = list(range(len(records)))
    random.Random(cfg.seed).shuffle(order)
    k = round(cfg.val_fraction * len(records))
    if cfg.val_fraction > 0 and len(records) >= 2:
        k = min(max(k, 1), len(records) - 1)
    held = set(order[:k])
    return [r for i, r in enumerate(records) if i not in held], [
        r for i, r in enumerate(records) if i in held
    ]


def bio_tags(labels: list[str]) -> list[str]:
    """`O`, then `B-X`, `I-X` for each entity label in order: the model's id2label."""
    return ["O"] + [f"{p}-{label}" for label in labels for p in ("B", "I")]


def build_tagger(base: str, tags: list[str]):
    """`BertForTokenClassification` on the base encoder with a fresh head, and its (fast) tokenizer."""
    from transformers import AutoTokenizer, BertForTokenClassification
    from transformers.utils import logging as hf_logging

    base_dir, config = encoder_config(base)
    if config.model_type != "bert":
        raise SlmError(
            f"--base {base} is a {config.model_type!r} model; token classification fine-tunes BERT-family "
            "encoders (e.g. minilm-l6)"
        )
    hf_logging.set_verbosity_error()  # the load report lists the new head and the unused pooler: expected
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = BertForTokenClassification.from_pretrained(
            base_dir,
            num_labels=len(tags),
            id2label=dict(enumerate(tags)),
            label2id={t: i for i, t in enumerate(tags)},
        )
    except Exception as e:
        raise SlmError(f"cannot load {base} as an encoder: {first_line(e)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise SlmError(f"{base} has no fast tokenizer (tokenizer.json): word alignment needs one")
    return model, tokenizer


WORD = re.compile(r"\w+|[^\w\s]")
"""A word: a run of letters and digits, or one other character. The tokenizer sees these words, so a
currency sign and its number (`£45`, one word and even one token to BERT) can be two entities."""


def split_words(text: str) -> list[tuple[int, int]]:
    """The (start, end) characters of each word of `text`."""
    return [m.span() for m in WORD.finditer(text)]


def encode(tokenizer, text: str, spans: list[Span], max_len: int, tag_id: dict) -> tuple[list, list, int]:
    """Token ids, first-sub-word BIO tag ids (IGNORE elsewhere), and how many spans cut through a word."""
    words = split_words(text)
    enc = tokenizer([text[a:b] for a, b in words], is_split_into_words=True, truncation=True,
                    max_length=max_len)  # fmt: skip
    tags = [IGNORE] * len(enc["input_ids"])
    for first, w in first_sub_words(enc.word_ids()).items():
        start, end = words[w]
        tag = "O"
        for s in spans:
            if s.start <= start < s.end:
                tag = ("B-" if start == s.start else "I-") + s.label
                break
            if start < s.start < end:  # the span starts inside this word: the word carries it
                tag = "B-" + s.label
                break
        tags[first] = tag_id[tag]
    starts, ends = {a for a, _ in words}, {b for _, b in words}
    misaligned = sum(1 for s in spans if s.start not in starts or s.end not in ends)
    return enc["input_ids"], tags, misaligned


def first_sub_words(word_ids: list) -> dict[int, int]:
    """Token index of each word's first sub-word -> the word's index (special tokens and padding skipped)."""
    firsts: dict[int, int] = {}
    prev = None
    for i, w in enumerate(word_ids):
        if w is not None and w != prev:
            firsts[i] = w
        prev = w
    return firsts


def spans_from_tags(text: str, words: list[tuple[int, int, str, float]]) -> list[dict]:
    """Character spans from words in order as (start, end, tag, probability); `I-X` after another label
    (or after `O`) opens a new span, as seqeval's lenient decoding does. A span's score is its words' mean."""
    spans: list[dict] = []
    current = None
    for start, end, tag, p in words:
        kind, _, label = tag.partition("-")
        if kind == "O" or not label:
            current = None
            continue
        if kind == "I" and current is not None and current["label"] == label:
            current["end"] = end
            current["_p"].append(p)
            continue
        current = {"start": start, "end": end, "label": label, "_p": [p]}
        spans.append(current)
    for s in spans:
        s["text"] = text[s["start"] : s["end"]]
        s["score"] = float(np.mean(s.pop("_p")))
    return spans


def fine_tune_tokens(model, tokenizer, train, val: list[Record], tags, cfg: TokenTrainConfig, log, progress):
    """End-to-end training; returns (best epoch, epochs run, best validation scores), the best weights loaded."""
    import torch
    import torch.nn.functional as F

    rng = random.Random(cfg.seed)
    ids = [t[0] for t in train]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_fraction * total))
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg.weight_decay)
    for g in optimizer.param_groups:
        g["peak_lr"] = g["lr"]
    best_f1, best_epoch, best_state, best_scores, stale, step = -1.0, 0, None, {}, 0, 0
    started = time.perf_counter()
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        seen, loss_sum, epoch_started = 0, 0.0, time.perf_counter()
        with bar(f"epoch {epoch}/{cfg.epochs}", total=len(train), enabled=progress) as b:
            for batch in length_bucketed_batches(ids, cfg.batch_size, rng):
                scale = min(1.0, (step + 1) / warmup) * max(0.0, (total - step) / max(1, total - warmup))
                for g in optimizer.param_groups:
                    g["lr"] = g["peak_lr"] * min(scale, 1.0)
                inputs, labels = pad_tagged([train[i] for i in batch], tokenizer.pad_token_id or 0)
                logits = model(**inputs).logits
                loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                step += 1
                seen += len(batch)
                loss_sum += loss.item() * len(batch)
                rate = seen / max(time.perf_counter() - epoch_started, 1e-9)
                b.update(rate=f"{rate:.0f} sent/s loss {loss_sum / seen:.3f}")
                b.advance(len(batch))
                if cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60:
                    break
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "seconds": time.perf_counter() - started,
        }
        scores = {}
        if val:
            model.eval()
            tagger = TokenClassifier.from_model(model, tokenizer, tags, cfg.max_len)
            pred = tagger.extract([r.text for r in val])
            scores = span_scores([r.spans for r in val], [[_span(s) for s in p] for p in pred])
            row |= {f"val_{k}": scores["micro"][k] for k in ("precision", "recall", "f1")}
        log.append(row)
        say(
            progress,
            f"epoch {epoch}: train loss {row['train_loss']:.4f}"
            + (f", val micro-F1 {row['val_f1']:.4f}" if val else "")
            + f" ({row['seconds']:.0f} s)",
        )
        f1 = row.get("val_f1", float(epoch))  # without a val split the last epoch is kept
        if f1 > best_f1:
            best_f1, best_epoch, best_scores, stale = f1, epoch, scores, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                say(progress, f"no better val micro-F1 for {stale} epochs: stopping early")
                break
        if cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60:
            say(progress, f"--max-minutes {cfg.max_minutes} reached")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best_epoch, epoch, best_scores


def pad_tagged(rows: list[tuple[list, list]], pad_id: int):
    """Right-padded ids, attention mask and token types, and tag ids padded with IGNORE, as tensors."""
    import torch

    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (seq, tags) in enumerate(rows):
        ids[i, : len(seq)] = torch.as_tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, : len(tags)] = torch.as_tensor(tags)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}, labels


# ---------------------------------------------------------------- prediction


def is_token_classifier(model: str) -> bool:
    """Whether `model` is a directory from `slm classify train --task tokens`."""
    try:
        return json.loads((Path(model) / META).read_text()).get("task") == "tokens"
    except (OSError, ValueError):
        return False


class TokenClassifier:
    """A trained entity tagger behind one interface: `extract(texts)` -> character spans (torch today)."""

    def __init__(self, tokenizer, tags: list[str], max_len: int, run, runtime: str, path: Path | None = None):
        self.tokenizer, self.tags, self.max_len, self._run = tokenizer, tags, max_len, run
        self.labels = sorted({t[2:] for t in tags if t != "O"})
        self.runtime, self.path = runtime, path
        self.meta: dict = {}

    @classmethod
    def from_model(cls, model, tokenizer, tags: list[str], max_len: int) -> TokenClassifier:
        """A model still in memory (the trainer's validation)."""
        return cls(tokenizer, tags, max_len, _torch_runner(model), "torch")

    @classmethod
    def load(cls, model: str, threads: int | None = None) -> TokenClassifier:
        """A directory from `slm classify train --task tokens`."""
        from transformers import AutoTokenizer

        path = Path(model)
        meta_path = path / META
        if not meta_path.exists():
            raise SlmError(f"no token classifier at {model} (no {META})")
        meta = json.loads(meta_path.read_text())
        if meta.get("task") != "tokens":
            raise SlmError(f"{model} is a text classifier, not a token classifier (train with --task tokens)")
        from transformers import AutoModelForTokenClassification
        from transformers.utils import logging as hf_logging

        from slmforge.core.runtime import set_threads

        set_threads(threads)
        hf_logging.disable_progress_bar()
        tokenizer = AutoTokenizer.from_pretrained(path)
        run = _torch_runner(AutoModelForTokenClassification.from_pretrained(path).eval())
        tagger = cls(tokenizer, meta["tags"], meta["max_len"], run, "torch", path)
        tagger.meta = meta
        return tagger

    def extract(self, texts: list[str], batch_size: int = 32) -> list[list[dict]]:
        """Spans of each text: [{"start", "end", "label", "text", "score"}], character offsets into it."""
        out: list[list[dict]] = []
        for start in range(0, len(texts), batch_size):
            out += self._extract_batch(texts[start : start + batch_size])
        return out

    def _extract_batch(self, texts: list[str]) -> list[list[dict]]:
        words = [split_words(t) for t in texts]
        stride = max(1, self.max_len // 4)
        enc = self.tokenizer(
            [[t[a:b] for a, b in ws] or [""] for t, ws in zip(texts, words)], is_split_into_words=True,
            truncation=True, max_length=self.max_len, stride=stride, padding=True,
            return_overflowing_tokens=True, return_tensors="np",
        )  # fmt: skip
        mask = enc["attention_mask"].astype(np.int64)
        probs = _softmax(self._run(enc["input_ids"].astype(np.int64), mask))
        sample_of = (
            enc["overflow_to_sample_mapping"] if "overflow_to_sample_mapping" in enc else range(len(texts))
        )
        # per text: word index -> (centrality, tag, probability); the window where it is most central wins
        best: list[dict[int, tuple]] = [{} for _ in texts]
        for w_i, sample in enumerate(sample_of):
            real = int(mask[w_i].sum())
            for first, w in first_sub_words(enc.word_ids(w_i)).items():
                centrality = min(first, real - 1 - first)
                if w not in best[sample] or centrality > best[sample][w][0]:
                    k = int(probs[w_i, first].argmax())
                    best[sample][w] = (centrality, self.tags[k], float(probs[w_i, first, k]))
        return [
            spans_from_tags(
                text, [(*ws[w], tag, p) for w, (_, tag, p) in sorted(found.items()) if w < len(ws)]
            )
            for text, ws, found in zip(texts, words, best)
        ]

    def params(self) -> int:
        from slmforge.core import workspace

        known = workspace.read_manifest(self.path).get("metrics", {}).get("params") if self.path else None
        return int(known or self.meta.get("params") or 0)

    def disk_mb(self) -> float:
        return dir_size(self.path) / 1e6 if self.path else 0.0


def _torch_runner(model):
    import torch

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids)
            return model(input_ids=ids, attention_mask=torch.from_numpy(attention_mask),
                         token_type_ids=torch.zeros_like(ids)).logits.float().numpy()  # fmt: skip

    return run


# ---------------------------------------------------------------- helpers


def _span(d: dict) -> Span:
    return Span(d["start"], d["end"], d["label"])


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _validate(cfg: TokenTrainConfig) -> None:
    checks = [
        (0 <= cfg.val_fraction < 1, "--val-fraction must be in [0, 1)"),
        (cfg.epochs >= 1, "--epochs must be at least 1"),
        (cfg.lr > 0 and cfg.head_lr > 0, "learning rates must be positive"),
        (cfg.batch_size >= 1, "--batch-size must be at least 1"),
        (16 <= cfg.max_len <= 512, "--max-len must be in [16, 512]"),
        (cfg.patience >= 1, "--patience must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise SlmError(message)
