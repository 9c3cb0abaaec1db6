"""Text classification SLMs: fine-tune a sentence encoder into an intent / sentiment / topic classifier.

`train_classifier(cfg)` reads a CSV or JSONL file, holds out a stratified validation split (or reads
`--val`), and then, in order:

1. embeds the training texts with the frozen encoder (mean pooling) and fits a logistic regression on
   them: a strong classifier on its own (the first baseline), and the initial head of the fine-tuned model
   (its feature standardisation folded into the linear layer), so fine-tuning starts from ~93 % instead of
   chance; fits the second baseline, a TF-IDF word + character n-gram logistic regression
   (`slmforge.clf.tfidf`), and scores both on the validation split;
2. few-shot mode (`--few-shot`, or by default when the rarest label has fewer than `few_shot_below`
   examples): no validation split is taken from the training data; contrastive training of the encoder on
   same-class pairs with in-batch negatives (SetFit-style, a fixed `few_shot_steps` budget), then a fresh
   logistic-regression head on the tuned embeddings: no end-to-end step;
3. otherwise fine-tunes encoder and head end to end for a budget of optimizer steps (`step_budget`: 5
   passes over the training set, at least 500 and at most 3000 steps, unless --steps or --epochs):
   AdamW, layer-wise learning-rate decay, label smoothing, warmup then linear decay, length-bucketed
   batches with dynamic padding; validation accuracy and macro-F1 on a schedule, the best checkpoint kept
   (step 0 = the initial head, i.e. the frozen-embedding baseline), early stopping after `patience`
   validations without improvement;
4. ships the fine-tuned model unless a baseline is better on the validation split: then it says so and
   ships the baseline (the TF-IDF model, or the frozen encoder with its logistic-regression head), or, with
   `--strict`, refuses;
5. optional out-of-scope detection: a threshold on the model's confidence, calibrated on the
   validation split, below which `predict` answers `oos`;
6. saves an HF directory (`AutoModelForSequenceClassification` with `trust_remote_code=True`, or
   after `import slmforge.clf.model`; id2label set), the tokenizer, `classifier.json` (labels,
   max length, OOS threshold) and `train_log.jsonl`, and registers it in the workspace; a TF-IDF model
   is saved as `slmforge.clf.tfidf` describes, with the same `classifier.json` (`"arch": "tfidf"`).

`--arch tfidf` trains only the TF-IDF model. `slmforge.clf.predict` and `slmforge.clf.evaluate` run any
such directory, or an encoder's ONNX export (`slm export`, `slm quantize`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from slmforge.clf.configs import ClassifyTrainConfig
from slmforge.clf.evaluate import macro_f1
from slmforge.clf.examples import check_labels, preview, read_examples, stratified_split
from slmforge.clf.head import fit_linear_head
from slmforge.clf.io import META, build_classifier, save_model
from slmforge.clf.predict import SCORES, oos_score
from slmforge.clf.tuning import (
    Tuned,
    contrastive_tune,
    embed,
    fine_tune,
    logits_of,
    seed_everything,
    tokenize,
    unknown_share,
)
from slmforge.core.errors import SlmError
from slmforge.core.progress import bar, say

ARCHS = ("encoder", "tfidf", "static")
UNKNOWN_WARN = 0.05
"""The log warns when more than this share of the validation texts' tokens are unknown to the tokenizer."""


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
    best_epoch: float
    epochs_run: float
    oos_threshold: float | None
    elapsed_s: float
    arch: str = "encoder"
    """What was shipped: encoder (fine-tuned, or the frozen encoder with its LR head) or tfidf."""
    shipped: str = "fine-tuned"
    """fine-tuned, few-shot, frozen-lr (the frozen-embedding baseline) or tfidf."""
    tfidf_val_accuracy: float = float("nan")
    best_step: int = 0
    steps_run: int = 0
    budget: str = ""
    """The budget chosen and why, as logged."""
    notes: list[str] = field(default_factory=list)
    """What the run said about its choices (few-shot, baseline shipped)."""


def train_classifier(cfg: ClassifyTrainConfig, progress: bool = True) -> ClassifyResult:
    """Train a classifier as described in the module docstring; return where it went and how it did."""
    from slmforge.core.runtime import set_threads

    started = time.perf_counter()
    _validate(cfg)
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite and any(out.iterdir()):
        raise SlmError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
    threads = set_threads(cfg.threads)
    texts, labels = read_examples(cfg.data, cfg.text_col, cfg.label_col, cfg.encoding)
    label_names = check_labels(labels, cfg.min_per_class, cfg.data)
    rarest = min(Counter(labels).values())
    few_shot = cfg.arch == "encoder" and (cfg.few_shot or rarest < cfg.few_shot_below)
    notes: list[str] = []
    if few_shot:
        why = (
            "--few-shot"
            if cfg.few_shot
            else f"the rarest label has {rarest} examples, fewer than {cfg.few_shot_below}"
        )
        notes.append(
            f"few-shot mode ({why}): "
            + ("validation on --val" if cfg.val else "no validation split is taken from the training data")
            + f"; fixed budget: {cfg.few_shot_steps} contrastive steps on same-label pairs, then a "
            "logistic-regression head"
        )
        say(progress, notes[-1])
    label_names, train_texts, y_train, val_texts, y_val = _read_splits(
        cfg, texts, labels, label_names, split=not few_shot
    )
    if cfg.oos and len(val_texts) < 5:
        raise SlmError(
            "--oos calibrates its threshold on the validation split: it needs at least 5 texts"
            + (
                " (few-shot mode takes none from the training data: pass --val)"
                if few_shot and not cfg.val
                else ""
            )
        )
    ctx = _Run(cfg, label_names, train_texts, y_train, val_texts, y_val, threads, started, progress, notes)
    if cfg.arch == "tfidf":
        return ctx.ship_linear(ctx.fit_tfidf(), log=[])
    if cfg.arch == "static":
        return ctx.ship_linear(ctx.fit_static(), log=[])
    return _train_encoder(ctx, few_shot)


def _train_encoder(ctx: _Run, few_shot: bool) -> ClassifyResult:
    cfg, progress = ctx.cfg, ctx.progress
    y_train, y_val, label_names = ctx.y_train, ctx.y_val, ctx.label_names
    seed_everything(cfg.seed)
    model, tokenizer, _ = build_classifier(cfg.base, label_names)
    train_ids = tokenize(tokenizer, ctx.train_texts, cfg.max_len)
    val_ids = tokenize(tokenizer, ctx.val_texts, cfg.max_len)
    log: list[dict] = []
    ctx.unknown_tokens(tokenizer, log)

    # 1. the baselines: frozen embeddings + logistic regression (also the initial head), and TF-IDF
    with bar("embed (frozen)", total=len(train_ids) + len(val_ids), enabled=progress) as b:
        x_train = embed(model, train_ids, b)
        x_val = embed(model, val_ids, b) if len(val_ids) else np.zeros((0, x_train.shape[1]), "float32")
    head = fit_linear_head(x_train, y_train, len(label_names), cfg.seed)
    frozen_acc = float((head.predict(x_val) == y_val).mean()) if len(y_val) else float("nan")
    log.append({"stage": "frozen_lr", "val_accuracy": frozen_acc})
    tfidf = None
    if len(y_val):
        say(progress, f"baseline, frozen embeddings + logistic regression: val accuracy {frozen_acc:.4f}")
        tfidf = ctx.fit_tfidf()
        log.append({"stage": "tfidf", "val_accuracy": tfidf.val_accuracy})
        say(progress, f"baseline, TF-IDF word + char n-grams + logistic regression: val accuracy "
                      f"{tfidf.val_accuracy:.4f}")  # fmt: skip
    else:
        ctx.notes.append("no validation data: the baselines are not compared, the trained model is shipped")
        say(progress, ctx.notes[-1])

    tuned = Tuned(0, 0, 1)
    shipped = "fine-tuned"
    if few_shot:
        # 2. SetFit-style: contrastive encoder training, then a new head on the tuned embeddings
        frozen_state = {k: v.detach().clone() for k, v in model.state_dict().items()} if len(y_val) else None
        contrastive_tune(model, train_ids, y_train, cfg, progress)
        with bar("embed (tuned)", total=len(train_ids), enabled=progress) as b:
            x_train = embed(model, train_ids, b)
        tuned_head = fit_linear_head(x_train, y_train, len(label_names), cfg.seed)
        tuned_head.load_into(model.classifier)
        shipped = "few-shot"
        ctx.budget = f"few-shot: {cfg.few_shot_steps} contrastive steps, then a logistic-regression head"
        if frozen_state is not None:
            few_acc = float((logits_of(model.eval(), val_ids).argmax(1) == y_val).mean())
            log.append({"stage": "few_shot", "val_accuracy": few_acc})
            say(progress, f"few-shot: val accuracy {few_acc:.4f}")
            if frozen_acc > few_acc:  # the frozen encoder with its head is the better model: restore it
                model.load_state_dict(frozen_state)
                head.load_into(model.classifier)
                shipped = "frozen-lr"
    else:
        if cfg.head_init == "lr":
            head.load_into(model.classifier)
        # 3. end-to-end fine-tuning
        tuned = fine_tune(
            model, train_ids, y_train, val_ids, y_val, cfg, log, progress,
            initial_val_accuracy=frozen_acc if cfg.head_init == "lr" else None,
        )  # fmt: skip
        ctx.budget = next(row["text"] for row in log if row.get("stage") == "budget")
        if cfg.head_init == "lr" and len(y_val) and tuned.best_step == 0:
            shipped = "frozen-lr"

    model.eval()
    val_logits = logits_of(model, val_ids) if len(val_ids) else np.zeros((0, len(label_names)))
    val_pred = val_logits.argmax(1) if len(val_ids) else np.zeros(0, int)
    val_acc = float((val_pred == y_val).mean()) if len(y_val) else float("nan")
    val_f1 = macro_f1(y_val, val_pred, len(label_names)) if len(y_val) else float("nan")

    # 4. never worse than a baseline on the validation split
    tfidf_acc = tfidf.val_accuracy if tfidf is not None else float("nan")
    use_tfidf = tfidf is not None and tfidf_acc > val_acc
    if shipped == "frozen-lr" or use_tfidf:
        tuned_name = "few-shot training" if few_shot else "fine-tuning"
        if use_tfidf:
            best = f"the TF-IDF baseline ({tfidf_acc:.4f} val accuracy)"
            tried = (f"{tuned_name} did not beat the frozen-embedding baseline ({val_acc:.4f}), which"
                     if shipped == "frozen-lr" else f"{tuned_name} ({val_acc:.4f} val accuracy)")  # fmt: skip
        else:
            best = f"frozen embeddings + logistic regression ({frozen_acc:.4f} val accuracy)"
            tried = tuned_name
        if cfg.strict:
            raise SlmError(
                f"{tried} does not beat {best}: refusing (--strict); drop --strict to ship the baseline, "
                "or try more data or another --base"
            )
        if use_tfidf and cfg.ship_baseline:
            ctx.notes.append(f"{tried} does not beat {best}: shipping the TF-IDF model")
            say(progress, f"[yellow]{ctx.notes[-1]}[/yellow]")
            log.append({"stage": "choice", "shipped": "tfidf", "val_accuracy": tfidf_acc,
                        "encoder_val_accuracy": val_acc})  # fmt: skip
            return ctx.ship_linear(tfidf, log, frozen_acc=frozen_acc, encoder_val_accuracy=val_acc)
        if use_tfidf:
            ctx.notes.append(f"{tried} does not beat {best}; shipping the encoder (--no-ship-baseline)")
        else:
            ctx.notes.append(f"{tried} did not beat {best}: shipping the frozen encoder with that head")
        say(progress, f"[yellow]{ctx.notes[-1]}[/yellow]")
    log.append({"stage": "choice", "shipped": shipped, "val_accuracy": val_acc})

    # 5. out-of-scope threshold, calibrated on the in-scope validation split
    threshold = None
    if cfg.oos:
        threshold = float(np.quantile(oos_score(val_logits, cfg.oos_score), cfg.oos_val_flag_rate))

    # 6. save
    params = sum(p.numel() for p in model.parameters())
    meta = ctx.meta("encoder", params, threshold) | {"max_len": cfg.max_len, "base": cfg.base}
    metrics = ctx.metrics(params, val_acc, val_f1) | {
        "frozen_lr_val_accuracy": frozen_acc,
        "tfidf_val_accuracy": tfidf_acc,
        "shipped": shipped,
        "best_epoch": tuned.best_epoch,
        "best_step": tuned.best_step,
        "steps": tuned.steps,
    }

    def write(tmp: Path) -> None:
        save_model(model, tokenizer, tmp)

    ctx.save(write, meta, metrics, log)
    return ClassifyResult(
        model_dir=str(ctx.cfg.out),
        labels=label_names,
        params=params,
        train_examples=len(train_ids),
        val_examples=len(val_ids),
        val_accuracy=val_acc,
        val_macro_f1=val_f1,
        frozen_lr_val_accuracy=frozen_acc,
        best_epoch=tuned.best_epoch,
        epochs_run=tuned.epochs_run,
        oos_threshold=threshold,
        elapsed_s=time.perf_counter() - ctx.started,
        shipped=shipped,
        tfidf_val_accuracy=tfidf_acc,
        best_step=tuned.best_step,
        steps_run=tuned.steps,
        budget=ctx.budget,
        notes=ctx.notes,
    )


@dataclass
class _Fitted:
    model: object  # slmforge.clf.tfidf.TfidfModel or slmforge.clf.static.StaticModel
    val_logits: np.ndarray
    val_accuracy: float
    seconds: float
    arch: str = "tfidf"
    how: str = ""
    """What the log says about the fit (features, dims, the head's C)."""


@dataclass
class _Run:
    """One training run's inputs and the saving every shipped model goes through."""

    cfg: ClassifyTrainConfig
    label_names: list[str]
    train_texts: list[str]
    y_train: np.ndarray
    val_texts: list[str]
    y_val: np.ndarray
    threads: int
    started: float
    progress: bool
    notes: list[str]
    budget: str = ""

    def fit_tfidf(self) -> _Fitted:
        from slmforge.clf.tfidf import fit_tfidf

        t0 = time.perf_counter()
        model = fit_tfidf(self.train_texts, self.y_train, len(self.label_names), seed=self.cfg.seed)
        logits = model.logits(self.val_texts)
        acc = float((logits.argmax(1) == self.y_val).mean()) if len(self.y_val) else float("nan")
        how = f"TF-IDF + logistic regression: {model.n_features:,} features"
        return _Fitted(model, logits, acc, time.perf_counter() - t0, "tfidf", how)

    def fit_static(self) -> _Fitted:
        from slmforge.clf.static import fit_static

        t0 = time.perf_counter()
        model, why = fit_static(self.cfg.base, self.train_texts, self.y_train, len(self.label_names),
                                self.val_texts, self.y_val, self.cfg.static_dims, self.cfg.seed,
                                self.progress)  # fmt: skip
        self.unknown_tokens(model.tokenizer, log=None, unk_id=model.info.get("unk_id"))
        logits = model.logits(self.val_texts)
        acc = float((logits.argmax(1) == self.y_val).mean()) if len(self.y_val) else float("nan")
        how = (f"static embeddings of {self.cfg.base} ({model.embeddings.shape[0]:,} tokens x {model.dims}) "
               f"+ logistic regression, {why}")  # fmt: skip
        return _Fitted(model, logits, acc, time.perf_counter() - t0, "static", how)

    def unknown_tokens(self, tokenizer, log: list[dict] | None, unk_id: int | None = None) -> float:
        """Log (and warn above UNKNOWN_WARN) the share of unknown tokens in the validation texts."""
        texts = self.val_texts or self.train_texts
        share = unknown_share(tokenizer, texts, unk_id)
        which = "validation" if self.val_texts else "training"
        if log is not None:
            log.append({"stage": "unknown_tokens", "share": share, "texts": which})
        if share > UNKNOWN_WARN:
            self.notes.append(
                f"{share * 100:.1f} % of the {which} texts' tokens are unknown to the {self.cfg.base} tokenizer "
                "([UNK] or byte fallback): it reads this data poorly; see docs/classify.md for an encoder "
                "for other languages, or try --arch tfidf"
            )
            say(self.progress, f"[yellow]warning: {self.notes[-1]}[/yellow]")
        return share

    def ship_linear(self, fitted: _Fitted, log: list[dict], **extra) -> ClassifyResult:
        """Save a tfidf or static model (a linear head on features computed without torch)."""
        cfg = self.cfg
        arch = fitted.arch
        pred = fitted.val_logits.argmax(1) if len(self.y_val) else np.zeros(0, int)
        val_f1 = macro_f1(self.y_val, pred, len(self.label_names)) if len(self.y_val) else float("nan")
        if cfg.arch == arch:
            log.append(
                {"stage": arch, "val_accuracy": fitted.val_accuracy, "seconds": round(fitted.seconds, 2)}
            )
            say(
                self.progress,
                f"{fitted.how}: val accuracy {fitted.val_accuracy:.4f} ({fitted.seconds:.1f} s)",
            )
        threshold = None
        if cfg.oos:
            scores = oos_score(fitted.val_logits, cfg.oos_score)
            threshold = float(np.quantile(scores, cfg.oos_val_flag_rate))
        m = fitted.model
        params = int(m.weight.size + m.bias.size)
        if arch == "static":
            params += int(m.embeddings.size)
            extra_meta = {"dims": m.dims, "vocab": int(m.embeddings.shape[0]), "base": cfg.base}
        else:
            extra_meta = {"features": m.n_features}
        meta = self.meta(arch, params, threshold) | extra_meta
        metrics = self.metrics(params, fitted.val_accuracy, val_f1) | {
            "shipped": arch,
            f"{arch}_val_accuracy": fitted.val_accuracy,
            **{k: v for k, v in extra.items() if k == "encoder_val_accuracy"},
            "frozen_lr_val_accuracy": extra.get("frozen_acc", float("nan")),
        }
        self.save(fitted.model.save, meta, metrics, log)
        return ClassifyResult(
            model_dir=str(cfg.out),
            labels=self.label_names,
            params=params,
            train_examples=len(self.train_texts),
            val_examples=len(self.val_texts),
            val_accuracy=fitted.val_accuracy,
            val_macro_f1=val_f1,
            frozen_lr_val_accuracy=extra.get("frozen_acc", float("nan")),
            best_epoch=0,
            epochs_run=0,
            oos_threshold=threshold,
            elapsed_s=time.perf_counter() - self.started,
            arch=arch,
            shipped=arch,
            tfidf_val_accuracy=fitted.val_accuracy if arch == "tfidf" else float("nan"),
            budget=self.budget,
            notes=self.notes,
        )

    def meta(self, arch: str, params: int, threshold: float | None) -> dict:
        cfg = self.cfg
        return {
            "task": "classification",
            "arch": arch,
            "labels": self.label_names,
            "text_col": cfg.text_col,
            "label_col": cfg.label_col,
            "oos": {"score": cfg.oos_score, "threshold": threshold, "val_flag_rate": cfg.oos_val_flag_rate}
            if cfg.oos
            else None,
            "params": params,
            "validation": "file" if cfg.val else ("split" if len(self.val_texts) else "none"),
            "config": asdict(cfg),
        }

    def metrics(self, params: int, val_acc: float, val_f1: float) -> dict:
        return {
            "params": params,
            "accuracy": val_acc,
            "val_accuracy": val_acc,
            "val_macro_f1": val_f1,
            "train_examples": len(self.train_texts),
            "val_examples": len(self.val_texts),
            "train_seconds": round(time.perf_counter() - self.started, 1),
            "threads": self.threads,
        }

    def save(self, write, meta: dict, metrics: dict, log: list[dict]) -> None:
        """Write the model (`write(tmp)`), `classifier.json` and the log atomically; register the directory."""
        from slmforge.core import workspace
        from slmforge.core.fsutil import atomic_dir, write_json

        out = Path(self.cfg.out)
        with atomic_dir(out, overwrite=self.cfg.overwrite) as tmp:
            write(tmp)
            write_json(tmp / META, meta)
            with open(tmp / "train_log.jsonl", "w", encoding="utf-8") as f:
                for row in log:
                    f.write(json.dumps(row) + "\n")
        source = {"encoder": f"classify:{self.cfg.base}", "static": f"classify:static:{self.cfg.base}"}.get(
            meta["arch"], f"classify:{meta['arch']}"
        )
        workspace.register("model", out, source=source, data_hash=_data_hash(self.cfg.data), metrics=metrics)


def _read_splits(
    cfg: ClassifyTrainConfig, texts: list[str], labels: list[str], label_names: list[str], split: bool = True
) -> tuple[list[str], list[str], np.ndarray, list[str], np.ndarray]:
    """Label names, then training texts and label ids, then validation texts and label ids (`--val`, or a
    stratified split held out of `data` when `split`, else none)."""
    if cfg.val:
        val_texts, val_labels = read_examples(cfg.val, cfg.text_col, cfg.label_col, cfg.encoding)
        unseen = sorted(set(val_labels) - set(label_names))
        if unseen:
            raise SlmError(f"{cfg.val} has labels not in {cfg.data}: {preview(unseen)}")
        train_texts, train_labels = texts, labels
    elif split:
        train_idx, val_idx = stratified_split(labels, cfg.val_fraction, cfg.seed)
        train_texts, train_labels = [texts[i] for i in train_idx], [labels[i] for i in train_idx]
        val_texts, val_labels = [texts[i] for i in val_idx], [labels[i] for i in val_idx]
    else:
        train_texts, train_labels, val_texts, val_labels = texts, labels, [], []
    label_id = {name: i for i, name in enumerate(label_names)}
    y_train = np.array([label_id[y] for y in train_labels])
    y_val = np.array([label_id[y] for y in val_labels], dtype=int)
    return label_names, train_texts, y_train, val_texts, y_val


# ---------------------------------------------------------------- helpers


def _validate(cfg: ClassifyTrainConfig) -> None:
    checks = [
        (0 <= cfg.val_fraction < 1, "--val-fraction must be in [0, 1)"),
        (cfg.arch in ARCHS, f"--arch must be one of {', '.join(ARCHS)}"),
        (2 <= cfg.static_dims <= 1024, "--static-dims must be in [2, 1024]"),
        (cfg.epochs is None or cfg.epochs >= 1, "--epochs must be at least 1"),
        (cfg.steps is None or cfg.steps >= 1, "--steps must be at least 1"),
        (cfg.epochs is None or cfg.steps is None, "give --steps or --epochs, not both"),
        (cfg.eval_every is None or cfg.eval_every >= 1, "--eval-every must be at least 1"),
        (cfg.few_shot_below >= 0, "--few-shot-below must be at least 0"),
        (not (cfg.strict and not cfg.ship_baseline), "--strict and --no-ship-baseline contradict each other"),
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


def _data_hash(path: str) -> str:
    from slmforge.core.fsutil import sha256_file

    return sha256_file(path)
