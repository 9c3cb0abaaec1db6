"""Text classification SLMs: fine-tune a sentence encoder into an intent / sentiment / topic classifier.

`train_classifier(cfg)` reads a CSV or JSONL file, holds out a stratified validation split (or reads
`--val`), and then, in order:

1. embeds the training texts with the frozen encoder (mean pooling) and fits a logistic regression on
   them: a strong classifier on its own, and the initial head of the fine-tuned model (its feature
   standardisation folded into the linear layer), so fine-tuning starts from ~93 % instead of chance;
2. few-shot mode only: contrastive training of the encoder on same-class pairs with in-batch negatives
   (SetFit-style), then a fresh logistic-regression head on the tuned embeddings: no end-to-end step;
3. otherwise fine-tunes encoder and head end to end: AdamW, layer-wise learning-rate decay, label
   smoothing, warmup then linear decay, length-bucketed batches with dynamic padding; validation
   accuracy and macro-F1 after every epoch, the best epoch kept (epoch 0 = the initial head), early stopping;
4. optional out-of-scope detection: a threshold on the model's confidence, calibrated on the
   validation split, below which `predict` answers `oos`;
5. saves an HF directory (`AutoModelForSequenceClassification` with `trust_remote_code=True`, or
   after `import slmforge.clf.model`; id2label set), the tokenizer, `classifier.json` (labels,
   max length, OOS threshold) and `train_log.jsonl`, and registers it in the workspace.

`predict` and `evaluate_classifier` run such a directory, or its ONNX export (`slm export`, `slm quantize`).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import random
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from slmforge.clf.configs import ClassifyTrainConfig
from slmforge.core.errors import SlmError

OOS = "oos"
META = "classifier.json"
SCORES = ("maxprob", "energy")


@dataclass
class ClassifyResult:
    model_dir: str
    labels: list[str]
    params: int
    train_examples: int
    val_examples: int
    val_accuracy: float
    val_macro_f1: float
    frozen_lr_val_accuracy: float
    best_epoch: int
    epochs_run: int
    oos_threshold: float | None
    elapsed_s: float


def train_classifier(cfg: ClassifyTrainConfig, progress: bool = True) -> ClassifyResult:
    """Train a classifier as described in the module docstring; return where it went and how it did."""
    from slmforge.core import workspace
    from slmforge.core.fsutil import atomic_dir, write_json
    from slmforge.core.runtime import set_threads

    started = time.perf_counter()
    _validate(cfg)
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite and any(out.iterdir()):
        raise SlmError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
    threads = set_threads(cfg.threads)
    texts, labels = read_examples(cfg.data, cfg.text_col, cfg.label_col, cfg.encoding)
    label_names = _check_labels(labels, cfg.min_per_class, cfg.data)
    if cfg.val:
        val_texts, val_labels = read_examples(cfg.val, cfg.text_col, cfg.label_col, cfg.encoding)
        unseen = sorted(set(val_labels) - set(label_names))
        if unseen:
            raise SlmError(f"{cfg.val} has labels not in {cfg.data}: {_few(unseen)}")
        train_texts, train_labels = texts, labels
    else:
        train_idx, val_idx = stratified_split(labels, cfg.val_fraction, cfg.seed)
        train_texts, train_labels = [texts[i] for i in train_idx], [labels[i] for i in train_idx]
        val_texts, val_labels = [texts[i] for i in val_idx], [labels[i] for i in val_idx]
    if cfg.oos and len(val_texts) < 5:
        raise SlmError("--oos calibrates its threshold on the validation split: it needs at least 5 texts")
    label_id = {name: i for i, name in enumerate(label_names)}
    y_train = np.array([label_id[y] for y in train_labels])
    y_val = np.array([label_id[y] for y in val_labels])

    _seed_everything(cfg.seed)
    model, tokenizer, _ = _build(cfg.base, label_names)
    train_ids = _tokenize(tokenizer, train_texts, cfg.max_len)
    val_ids = _tokenize(tokenizer, val_texts, cfg.max_len)
    log: list[dict] = []

    # 1. frozen embeddings + logistic regression: baseline and head initialisation
    with _bar_or_none("embed (frozen)", len(train_ids) + len(val_ids), progress) as b:
        x_train = embed(model, train_ids, b)
        x_val = embed(model, val_ids, b) if len(val_ids) else np.zeros((0, x_train.shape[1]), "float32")
    head = fit_linear_head(x_train, y_train, len(label_names), cfg.seed)
    frozen_acc = float((head.predict(x_val) == y_val).mean()) if len(y_val) else float("nan")
    log.append({"stage": "frozen_lr", "val_accuracy": frozen_acc})
    _say(progress, f"frozen embeddings + logistic regression: val accuracy {frozen_acc:.4f}")

    best_epoch, epochs_run = 0, 0
    if cfg.few_shot:
        # 2. SetFit-style: contrastive encoder training, then a new head on the tuned embeddings
        contrastive_tune(model, train_ids, y_train, cfg, progress)
        with _bar_or_none("embed (tuned)", len(train_ids), progress) as b:
            x_train = embed(model, train_ids, b)
        head = fit_linear_head(x_train, y_train, len(label_names), cfg.seed)
        head.load_into(model.classifier)
    else:
        if cfg.head_init == "lr":
            head.load_into(model.classifier)
        # 3. end-to-end fine-tuning
        best_epoch, epochs_run = fine_tune(
            model, train_ids, y_train, val_ids, y_val, cfg, log, progress,
            initial_val_accuracy=frozen_acc if cfg.head_init == "lr" else None,
        )  # fmt: skip

    model.eval()
    val_logits = logits_of(model, val_ids) if len(val_ids) else np.zeros((0, len(label_names)))
    val_pred = val_logits.argmax(1) if len(val_ids) else np.zeros(0, int)
    val_acc = float((val_pred == y_val).mean()) if len(y_val) else float("nan")
    val_f1 = macro_f1(y_val, val_pred, len(label_names)) if len(y_val) else float("nan")

    # 4. out-of-scope threshold, calibrated on the in-scope validation split
    threshold = None
    if cfg.oos:
        threshold = float(np.quantile(oos_score(val_logits, cfg.oos_score), cfg.oos_val_flag_rate))

    # 5. save
    params = sum(p.numel() for p in model.parameters())
    meta = {
        "task": "classification",
        "labels": label_names,
        "max_len": cfg.max_len,
        "text_col": cfg.text_col,
        "label_col": cfg.label_col,
        "oos": {"score": cfg.oos_score, "threshold": threshold, "val_flag_rate": cfg.oos_val_flag_rate}
        if cfg.oos
        else None,
        "base": cfg.base,
        "params": params,
        "config": asdict(cfg),
    }
    metrics = {
        "params": params,
        "accuracy": val_acc,
        "val_accuracy": val_acc,
        "val_macro_f1": val_f1,
        "frozen_lr_val_accuracy": frozen_acc,
        "train_examples": len(train_ids),
        "val_examples": len(val_ids),
        "best_epoch": best_epoch,
        "train_seconds": round(time.perf_counter() - started, 1),
        "threads": threads,
    }
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        save_model(model, tokenizer, tmp)
        write_json(tmp / META, meta)
        with open(tmp / "train_log.jsonl", "w", encoding="utf-8") as f:
            for row in log:
                f.write(json.dumps(row) + "\n")
    workspace.register(
        "model", out, source=f"classify:{cfg.base}", data_hash=_data_hash(cfg.data), metrics=metrics
    )
    return ClassifyResult(
        model_dir=str(out),
        labels=label_names,
        params=params,
        train_examples=len(train_ids),
        val_examples=len(val_ids),
        val_accuracy=val_acc,
        val_macro_f1=val_f1,
        frozen_lr_val_accuracy=frozen_acc,
        best_epoch=best_epoch,
        epochs_run=epochs_run,
        oos_threshold=threshold,
        elapsed_s=time.perf_counter() - started,
    )


def fine_tune(
    model,
    train_ids,
    y_train,
    val_ids,
    y_val,
    cfg: ClassifyTrainConfig,
    log,
    progress,
    teacher_logits: np.ndarray | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    initial_val_accuracy: float | None = None,
) -> tuple:
    """End-to-end training; returns (best epoch, epochs run) and leaves the best epoch's weights loaded.

    With `teacher_logits` (one row per training text) the loss is `alpha` x the distillation KL at
    `temperature` (x T², Hinton et al.) + (1 - `alpha`) x cross-entropy; label -1 marks unlabeled texts.
    """
    import torch
    import torch.nn.functional as F

    from slmforge.core.progress import bar

    rng = random.Random(cfg.seed)
    steps_per_epoch = math.ceil(len(train_ids) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_fraction * total))
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    for g in optimizer.param_groups:
        g["peak_lr"] = g["lr"]
    labels_t = torch.as_tensor(y_train)
    teacher_t = torch.as_tensor(teacher_logits) if teacher_logits is not None else None
    best_acc, best_epoch, best_state, stale, step = -1.0, 0, None, 0, 0
    best_tuned = -1.0  # patience counts from the first tuned epoch: the first epochs may dip below the start
    if initial_val_accuracy is not None and len(val_ids):  # the starting point is a candidate too (epoch 0)
        best_acc = initial_val_accuracy
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    started = time.perf_counter()
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        seen, loss_sum = 0, 0.0
        epoch_started = time.perf_counter()  # the rate is this epoch's examples over this epoch's time
        with bar(f"epoch {epoch}/{cfg.epochs}", total=len(train_ids), enabled=progress) as b:
            for batch in length_bucketed_batches(train_ids, cfg.batch_size, rng):
                scale = min(1.0, (step + 1) / warmup) * max(0.0, (total - step) / max(1, total - warmup))
                for g in optimizer.param_groups:
                    g["lr"] = g["peak_lr"] * min(scale, 1.0)
                inputs = pad_batch([train_ids[i] for i in batch])
                logits = model(**inputs).logits
                labels = labels_t[batch]
                loss = (
                    F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing, ignore_index=-1)
                    if (labels >= 0).any()
                    else logits.sum() * 0
                )
                if teacher_t is not None:
                    kd = F.kl_div(
                        F.log_softmax(logits / temperature, -1),
                        F.softmax(teacher_t[batch] / temperature, -1),
                        reduction="batchmean",
                    )
                    loss = alpha * kd * temperature**2 + (1 - alpha) * loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                step += 1
                seen += len(batch)
                loss_sum += loss.item() * len(batch)
                now = time.perf_counter()
                elapsed = now - started
                b.update(rate=_rate_text(seen, now - epoch_started, loss_sum))
                b.advance(len(batch))
                if cfg.max_minutes and elapsed > cfg.max_minutes * 60:
                    break
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "seconds": time.perf_counter() - started,
        }
        if len(val_ids):
            model.eval()
            pred = logits_of(model, val_ids).argmax(1)
            row["val_accuracy"] = float((pred == y_val).mean())
            row["val_macro_f1"] = macro_f1(y_val, pred, model.config.num_labels)
        log.append(row)
        _say(
            progress,
            f"epoch {epoch}: train loss {row['train_loss']:.4f}"
            + (
                f", val accuracy {row['val_accuracy']:.4f}, macro-F1 {row['val_macro_f1']:.4f}"
                if len(val_ids)
                else ""
            )
            + f" ({row['seconds']:.0f} s)",
        )
        acc = row.get("val_accuracy", float(epoch))  # without a val split the last epoch is kept
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if acc > best_tuned:
            best_tuned, stale = acc, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                _say(progress, f"no better val accuracy for {stale} epochs: stopping early")
                break
        if cfg.max_minutes and time.perf_counter() - started > cfg.max_minutes * 60:
            _say(progress, f"--max-minutes {cfg.max_minutes} reached")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return best_epoch, epoch


def contrastive_tune(model, ids, y, cfg: ClassifyTrainConfig, progress) -> None:
    """SetFit-style encoder tuning: (anchor, positive) pairs of one class per batch, other classes as negatives.

    Each batch draws distinct classes, so no in-batch negative shares the anchor's class; the loss is a
    symmetric InfoNCE on cosine similarities (scale 20), as in sentence-transformers' MultipleNegativesRankingLoss.
    """
    import torch
    import torch.nn.functional as F

    from slmforge.core.progress import bar

    rng = random.Random(cfg.seed)
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(y):
        by_class.setdefault(int(c), []).append(i)
    classes = [c for c, members in by_class.items() if len(members) >= 2]
    if len(classes) < 2:
        raise SlmError("few-shot mode needs at least two labels with two or more examples each")
    per_batch = max(2, min(len(classes), cfg.batch_size))
    optimizer = torch.optim.AdamW(model.bert.parameters(), lr=cfg.few_shot_lr)
    model.train()
    with bar("contrastive pairs", total=cfg.few_shot_steps, enabled=progress) as b:
        for _step in range(cfg.few_shot_steps):
            chosen = rng.sample(classes, per_batch)
            pairs = [rng.sample(by_class[c], 2) for c in chosen]
            a = pad_batch([ids[p[0]] for p in pairs])
            p = pad_batch([ids[p[1]] for p in pairs])
            ea = F.normalize(model.embed(**a), dim=-1)
            ep = F.normalize(model.embed(**p), dim=-1)
            sim = ea @ ep.T * 20.0
            target = torch.arange(len(pairs))
            loss = (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            b.update(rate=f"loss {loss.item():.3f}")
            b.advance(1)
    model.eval()


# ---------------------------------------------------------------- predict


def predict(model: str, texts: list[str], threads: int | None = None, batch_size: int = 64) -> list[dict]:
    """Label each text: [{"text", "label", "score"}]; `score` is the softmax probability of the label.

    `model` is a directory from `slm classify train`, `slm export` or `slm quantize` (ONNX is used when the
    directory holds `model.onnx`). With a calibrated OOS threshold, low-confidence texts get label `oos`.
    """
    clf = load_classifier(model, threads)
    if not texts:
        return []
    for i, t in enumerate(texts):
        if not t or not t.strip():
            raise SlmError(f"text {i + 1} is empty")
    logits = clf.logits(texts, batch_size)
    labels = clf.decide(logits)
    probs = _softmax(logits)
    return [{"text": t, "label": lab, "score": float(p.max())} for t, lab, p in zip(texts, labels, probs)]


class Classifier:
    """A trained classifier behind one interface: torch (HF directory) or ONNX Runtime (`model.onnx`)."""

    def __init__(self, path: Path, threads: int | None = None):
        from transformers import AutoTokenizer

        import slmforge.clf.model  # noqa: F401  (registers the model type: no remote-code prompt)

        self.path = path
        meta_path = path / META
        if not meta_path.exists():
            raise SlmError(f"{path} is not a classifier from `slm classify train` (no {META})")
        self.meta = json.loads(meta_path.read_text())
        self.labels: list[str] = self.meta["labels"]
        self.max_len: int = self.meta["max_len"]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.onnx = (path / "model.onnx").exists()
        if self.onnx:
            import onnxruntime as ort

            from slmforge.core.runtime import free_cores

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = min(threads or free_cores(), free_cores())
            opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                str(path / "model.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            self.input_names = {i.name for i in self.session.get_inputs()}
            self.runtime = "onnxruntime"
        else:
            import torch

            from slmforge.core.runtime import set_threads

            set_threads(threads)
            from transformers import AutoModelForSequenceClassification
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
            self._torch = torch
            self.runtime = "torch"

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=self.max_len,
                padding=True,
                return_tensors="np",
            )
            out.append(self._run(enc))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), "float32")

    def _run(self, enc) -> np.ndarray:
        if self.onnx:
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self.input_names}
            if "token_type_ids" in self.input_names and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            return self.session.run(["logits"], feed)[0]
        torch = self._torch
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in enc.items()}
            return self.model(**inputs).logits.float().numpy()

    def decide(self, logits: np.ndarray) -> list[str]:
        labels = [self.labels[i] for i in logits.argmax(1)] if len(logits) else []
        oos = self.meta.get("oos")
        if oos and oos.get("threshold") is not None:
            flagged = oos_score(logits, oos["score"]) < oos["threshold"]
            labels = [OOS if f else lab for lab, f in zip(labels, flagged)]
        return labels

    def params(self) -> int:
        """Parameters of the model (an int8 export counts its fp32 source's, not its scale tensors)."""
        from slmforge.core import workspace

        known = workspace.read_manifest(self.path).get("metrics", {}).get("params") or self.meta.get("params")
        if self.onnx and known:
            return int(known)
        if self.onnx:
            import onnx

            graph = onnx.load(str(self.path / "model.onnx"), load_external_data=False).graph
            return int(sum(np.prod(t.dims) for t in graph.initializer))
        return sum(p.numel() for p in self.model.parameters())


def load_classifier(model: str, threads: int | None = None) -> Classifier:
    path = Path(model)
    if path.is_file() and path.suffix == ".onnx":
        path = path.parent
    if not path.is_dir():
        raise SlmError(f"no classifier at {model}")
    return Classifier(path, threads)


# ---------------------------------------------------------------- evaluate


def evaluate_classifier(
    model: str,
    data: str,
    text_col: str | None = None,
    label_col: str | None = None,
    report_dir: str | None = None,
    unseen_as_oos: bool = False,
    latency_queries: int = 200,
    batch_size: int = 64,
    threads: int | None = None,
    encoding: str = "utf-8",
    progress: bool = False,
) -> dict:
    """Accuracy, macro-F1, per-class report, confusion matrix PNG, OOS precision/recall, latency, size.

    Labels the model never saw raise an error, unless `unseen_as_oos` (they then count as `oos`, the
    way an out-of-scope test set is scored). Latency is one query at a time, tokenisation included.
    """
    from slmforge.core.fsutil import write_json
    from slmforge.core.progress import bar

    rss_before = _rss_mb()
    clf = load_classifier(model, threads)
    text_col = text_col or clf.meta.get("text_col", "text")
    label_col = label_col or clf.meta.get("label_col", "label")
    texts, gold = read_examples(data, text_col, label_col, encoding)
    known = set(clf.labels)
    unseen = sorted({g for g in gold if g not in known and g != OOS})
    if unseen and not unseen_as_oos:
        raise SlmError(
            f"{data} has {len(unseen)} labels the model was not trained on: {_few(unseen)} "
            "(pass --unseen-as-oos to score them as out-of-scope)"
        )
    gold = [OOS if g not in known else g for g in gold]

    t0 = time.perf_counter()
    logits = []
    with bar("classify", total=len(texts), enabled=progress) as b:
        for start in range(0, len(texts), batch_size):
            logits.append(clf.logits(texts[start : start + batch_size], batch_size))
            b.advance(min(batch_size, len(texts) - start))
    logits = np.concatenate(logits)
    batch_seconds = time.perf_counter() - t0
    pred = clf.decide(logits)
    names = clf.labels + ([OOS] if OOS in gold or OOS in pred else [])
    index = {n: i for i, n in enumerate(names)}
    g = np.array([index[x] for x in gold])
    p = np.array([index[x] for x in pred])
    per_class = per_class_report(g, p, names)
    in_scope = g != index.get(OOS, -1)
    result = {
        "model": str(model),
        "data": str(data),
        "runtime": clf.runtime,
        "examples": len(texts),
        "accuracy": float((g == p).mean()),
        "macro_f1": float(np.mean([r["f1"] for r in per_class if r["support"] > 0])),
        "in_scope_accuracy": float((g[in_scope] == p[in_scope]).mean()) if in_scope.any() else None,
    }
    if OOS in index:
        o = index[OOS]
        tp = int(((p == o) & (g == o)).sum())
        result["oos_precision"] = tp / max(int((p == o).sum()), 1)
        result["oos_recall"] = tp / max(int((g == o).sum()), 1)
        result["oos_examples"] = int((g == o).sum())
    queries = [texts[i % len(texts)] for i in range(min(latency_queries, max(len(texts), 1)))]
    for q in queries[:10]:  # warm-up
        clf.logits([q])
    times = []
    for q in queries:
        t = time.perf_counter()
        clf.logits([q])
        times.append((time.perf_counter() - t) * 1000)
    result |= {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "throughput_per_s": len(texts) / batch_seconds,
        "params": clf.params(),
        "disk_mb": dir_size(clf.path) / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # the whole process
        "model_rss_mb": _rss_mb() - rss_before,  # resident memory this model added (load + inference)
    }
    if report_dir:
        rd = Path(report_dir)
        rd.mkdir(parents=True, exist_ok=True)
        write_json(rd / "metrics.json", result)
        write_json(rd / "per_class.json", per_class)
        plot_confusion(g, p, names, rd / "confusion.png")
        result["report_dir"] = str(rd)
    result["per_class"] = per_class
    return result


def per_class_report(gold: np.ndarray, pred: np.ndarray, names: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(names):
        tp = int(((pred == i) & (gold == i)).sum())
        n_pred, n_gold = int((pred == i).sum()), int((gold == i).sum())
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"label": name, "precision": precision, "recall": recall, "f1": f1, "support": n_gold})
    return rows


def macro_f1(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> float:
    rows = per_class_report(np.asarray(gold), np.asarray(pred), [str(i) for i in range(n_labels)])
    return float(np.mean([r["f1"] for r in rows if r["support"] > 0]))


def plot_confusion(gold: np.ndarray, pred: np.ndarray, names: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slmforge.core.fsutil import atomic_file

    n = len(names)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (gold, pred), 1)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(6.0, min(24.0, n * 0.22))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=6 if n > 30 else 9)
    ax.set_yticks(range(n), names, fontsize=6 if n > 30 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (row-normalised), accuracy {np.trace(cm) / max(cm.sum(), 1):.4f}")
    fig.tight_layout()
    with atomic_file(png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---------------------------------------------------------------- data


def read_examples(path: str, text_col: str, label_col: str, encoding: str = "utf-8") -> tuple[list, list]:
    """(texts, labels) from a .csv with a header row or a .jsonl file; one-line errors for bad input."""
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"data file {path} does not exist")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SlmError(f"unknown encoding {encoding!r} (try utf-8, utf-8-sig, latin-1, cp1252)") from None
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # tolerate a byte-order mark
    try:
        raw = p.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise SlmError(
            f"{path} is not valid {encoding.removesuffix('-sig')} (byte {e.start}); "
            "pass --encoding with the file's encoding, e.g. latin-1 or cp1252"
        ) from None
    if p.suffix.lower() in (".jsonl", ".json"):
        rows, columns = [], set()
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise SlmError(f"{path}:{i} is not valid JSON") from None
            if not isinstance(obj, dict):
                raise SlmError(f"{path}:{i} is not a JSON object")
            columns |= set(obj)
            rows.append((i, obj))
        found = sorted(columns)
    elif p.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(
            io.StringIO(raw, newline=""), delimiter="\t" if p.suffix.lower() == ".tsv" else ","
        )
        found = list(reader.fieldnames or [])
        rows = [(i, r) for i, r in enumerate(reader, 2)]
    else:
        raise SlmError(f"{path}: expected a .csv, .tsv or .jsonl file")
    missing = [c for c in (text_col, label_col) if c not in found]
    if missing:
        raise SlmError(
            f"{path} has no column {', '.join(map(repr, missing))}; columns found: "
            f"{', '.join(found) or 'none'} (set --text-col / --label-col)"
        )
    texts, labels = [], []
    for line, r in rows:
        text, label = r.get(text_col), r.get(label_col)
        if text is None or not str(text).strip():
            raise SlmError(f"{path}:{line} has an empty {text_col!r}")
        if label is None or not str(label).strip():
            raise SlmError(f"{path}:{line} has an empty {label_col!r}")
        texts.append(str(text).strip())
        labels.append(str(label).strip())
    if not texts:
        raise SlmError(f"{path} holds no examples")
    return texts, labels


def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per label, hold out round(fraction * n) examples (at least one when fraction > 0 and n ≥ 2)."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    train, val = [], []
    for members in by_label.values():
        members = members[:]
        rng.shuffle(members)
        k = round(fraction * len(members))
        if fraction > 0 and len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        val += members[:k]
        train += members[k:]
    return sorted(train), sorted(val)


def _check_labels(labels: list[str], min_per_class: int, path: str) -> list[str]:
    counts: dict[str, int] = {}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    if len(counts) < 2:
        raise SlmError(f"{path} has only one label ({next(iter(counts))!r}); a classifier needs at least two")
    if OOS in counts:
        raise SlmError(f"{path} uses the reserved label {OOS!r}; rename it (oos is what --oos predicts)")
    rare = sorted(k for k, v in counts.items() if v < min_per_class)
    if rare:
        raise SlmError(
            f"{len(rare)} labels have fewer than {min_per_class} examples ({_few(rare)}); "
            "add examples, drop them, or lower --min-per-class"
        )
    return sorted(counts)


# ---------------------------------------------------------------- model, batches, heads


def _build(base: str, label_names: list[str]):
    """The base encoder as a mean-pooling classifier with a fresh head, and its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from slmforge.clf.model import MeanPoolBertConfig, MeanPoolBertForSequenceClassification
    from slmforge.core.hub import CATALOG, resolve_model

    if base in CATALOG and CATALOG[base].kind != "encoder":
        raise SlmError(f"--base {base} is a {CATALOG[base].kind}, not an encoder (try minilm-l6)")
    base_dir = resolve_model(base)
    try:
        config = AutoConfig.from_pretrained(base_dir)
    except Exception as e:
        raise SlmError(f"cannot load {base} as a transformers model: {_first_line(e)}") from None
    if config.model_type not in ("bert", MeanPoolBertConfig.model_type):
        raise SlmError(
            f"--base {base} is a {config.model_type!r} model; this version fine-tunes BERT-family "
            "encoders (e.g. minilm-l6 or a directory from `slm classify train`)"
        )
    fields = config.to_dict()
    for k in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path",
              "id2label", "label2id", "num_labels"):  # fmt: skip
        fields.pop(k, None)
    new = MeanPoolBertConfig(
        **fields,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the new head and the unused pooler: expected
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = MeanPoolBertForSequenceClassification.from_pretrained(
            base_dir, config=new, ignore_mismatched_sizes=True
        )
    except Exception as e:
        raise SlmError(f"cannot load {base} as an encoder: {_first_line(e)}") from None
    torch.nn.init.normal_(model.classifier.weight, std=0.02)
    torch.nn.init.zeros_(model.classifier.bias)
    return model, tokenizer, base_dir


def save_model(model, tokenizer, directory: Path) -> None:
    import shutil

    from transformers.utils import logging as hf_logging

    import slmforge.clf.model as ec

    hf_logging.disable_progress_bar()
    model.config.architectures = [type(model).__name__]
    model.config.auto_map = {
        "AutoConfig": "modeling_slmforge.MeanPoolBertConfig",
        "AutoModelForSequenceClassification": "modeling_slmforge.MeanPoolBertForSequenceClassification",
    }
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    shutil.copyfile(ec.__file__, directory / "modeling_slmforge.py")


def _tokenize(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_len)["input_ids"] if texts else []


def pad_batch(seqs: list[list[int]], pad_id: int = 0) -> dict:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def length_bucketed_batches(ids: list[list[int]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length texts (little padding), in shuffled order."""
    order = list(range(len(ids)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(ids[i]))
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def embed(model, ids: list[list[int]], bar=None, batch_size: int = 128) -> np.ndarray:
    """Mean-pooled embeddings, batched by length."""
    import torch

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = model.embed(**pad_batch([ids[i] for i in idx])).numpy()
            if bar is not None:
                bar.advance(len(idx))
    return out


def logits_of(model, ids: list[list[int]], batch_size: int = 128) -> np.ndarray:
    import torch

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = model(**pad_batch([ids[i] for i in idx])).logits.numpy()
    return out


@dataclass
class LinearHead:
    """A multinomial logistic regression on centred, scaled features, folded back into raw-feature weights.

    The features are scaled by one global factor, not per feature: per-feature standardisation divides by
    the spread of near-constant dimensions (down to 1e-6 in MiniLM) and folds into head weights of up to
    ~1,600, which then amplify any small change in those dimensions - the first fine-tuning epoch's
    updates, dropout, int8 rounding - into large logit swings. Globally scaled, the largest weight is ~3
    at the same frozen-embedding accuracy (BANKING77 val 0.934 both ways)."""

    weight: np.ndarray  # (labels, features)
    bias: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.weight.T + self.bias).argmax(1) if len(x) else np.zeros(0, int)

    def load_into(self, linear) -> None:
        import torch

        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(self.weight))
            linear.bias.copy_(torch.from_numpy(self.bias))


def fit_linear_head(x: np.ndarray, y: np.ndarray, n_labels: int, seed: int, c: float = 1.0) -> LinearHead:
    import warnings

    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(0), float(x.std()) + 1e-6
    clf = LogisticRegression(C=c, max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny sets
        clf.fit((x - mean) / std, y)
    weight = np.zeros((n_labels, x.shape[1]), dtype=np.float32)
    bias = np.full(n_labels, -1e4 if len(clf.classes_) < n_labels else 0.0, dtype=np.float32)
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2 and coef.shape[0] == 1:  # sklearn's binary form: one row for class 1
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    for row, cls in enumerate(clf.classes_):
        weight[cls] = coef[row] / std
        bias[cls] = intercept[row] - (coef[row] * mean / std).sum()
    return LinearHead(weight, bias)


def _param_groups(model, cfg: ClassifyTrainConfig) -> list[dict]:
    """Layer-wise lr decay: top layer gets cfg.lr, each layer below `layer_decay` times less; head gets head_lr."""
    layers = model.bert.encoder.layer
    n = len(layers)
    groups = [{"params": list(model.classifier.parameters()), "lr": cfg.head_lr}]
    for i, layer in enumerate(layers):
        groups.append({"params": list(layer.parameters()), "lr": cfg.lr * cfg.layer_decay ** (n - 1 - i)})
    groups.append({"params": list(model.bert.embeddings.parameters()), "lr": cfg.lr * cfg.layer_decay**n})
    return groups


# ---------------------------------------------------------------- helpers


def oos_score(logits: np.ndarray, kind: str) -> np.ndarray:
    """Higher = more in-scope."""
    if kind == "energy":
        m = logits.max(1, keepdims=True)
        return (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
    return _softmax(logits).max(1)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 1e6
    except OSError:
        return float("nan")


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _validate(cfg: ClassifyTrainConfig) -> None:
    checks = [
        (0 <= cfg.val_fraction < 1, "--val-fraction must be in [0, 1)"),
        (cfg.epochs >= 1, "--epochs must be at least 1"),
        (cfg.lr > 0 and cfg.head_lr > 0, "learning rates must be positive"),
        (cfg.batch_size >= 1, "--batch-size must be at least 1"),
        (8 <= cfg.max_len <= 512, "--max-len must be in [8, 512]"),
        (0 <= cfg.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        (cfg.head_init in ("lr", "random"), "--head-init must be lr or random"),
        (cfg.oos_score in SCORES, f"--oos-score must be one of {', '.join(SCORES)}"),
        (0 < cfg.oos_val_flag_rate < 0.5, "--oos-val-flag-rate must be in (0, 0.5)"),
        (cfg.min_per_class >= 1, "--min-per-class must be at least 1"),
        (cfg.patience >= 1, "--patience must be at least 1"),
        (cfg.few_shot_steps >= 1, "--few-shot-steps must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise SlmError(message)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _data_hash(path: str) -> str:
    from slmforge.core.fsutil import sha256_file

    return sha256_file(path)


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(map(repr, items[:n]))
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


def _rate_text(seen: int, seconds: float, loss_sum: float) -> str:
    """The epoch bar's rate field: examples seen this epoch over this epoch's seconds, and the mean loss."""
    return f"{seen / max(seconds, 1e-9):.0f} ex/s loss {loss_sum / max(seen, 1):.3f}"


def _say(progress: bool, text: str) -> None:
    if progress:
        from slmforge.core.progress import stderr

        stderr.print(text, highlight=False)


def _bar_or_none(description: str, total: int, progress: bool):
    from slmforge.core.progress import bar

    return bar(description, total=total, enabled=progress)
