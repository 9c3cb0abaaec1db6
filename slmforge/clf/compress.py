"""Smaller classifiers from a trained one: `slm prune` (drop layers, trim the vocabulary, heal) and
`slm distill` (a teacher's logits into a fresh student encoder).

Both end in the same healing step: the student trains on the teacher's softened logits (KL at
temperature T, x T²) plus the labels (cross-entropy), on the teacher's training file and optionally
unlabeled texts, keeping the epoch with the best validation accuracy. The validation split is the
teacher's own (same seed and fraction), so the student is never selected on texts the teacher trained on.

Vocabulary trimming keeps the WordPiece tokens that the training texts use, plus every single
character piece of the original vocabulary and the special tokens. MiniLM-L6 spends 11.7 M of its
22.7 M parameters on a 30,522-token embedding table; a domain's texts use a few thousand of them.
Greedy longest-match WordPiece tokenises every training text exactly as before (each piece it used is
kept); a word whose pieces are all gone becomes [UNK].
"""

from __future__ import annotations

import json
import string
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from slmforge.clf.configs import ClassifyTrainConfig, CompressConfig
from slmforge.clf.evaluate import macro_f1
from slmforge.clf.examples import read_examples, stratified_split
from slmforge.clf.head import fit_linear_head
from slmforge.clf.io import META, build_classifier, save_model
from slmforge.clf.predict import oos_score
from slmforge.clf.tuning import embed, fine_tune, logits_of, seed_everything, tokenize
from slmforge.core.errors import SlmError
from slmforge.core.progress import say


def prune(cfg: CompressConfig, progress: bool = True) -> dict:
    """Drop layers and unused vocabulary from the teacher itself, then heal by distillation."""
    if cfg.student is not None:
        raise SlmError("prune starts from the teacher; use distill for another student encoder")
    return compress(cfg, progress)


def distill(cfg: CompressConfig, progress: bool = True) -> dict:
    """Teach `cfg.student` (an encoder: catalog name or dir) the teacher's logits, with a fresh head."""
    return compress(cfg, progress)


def compress(cfg: CompressConfig, progress: bool = True) -> dict:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    import slmforge.clf.model  # noqa: F401  (registers the model type)
    from slmforge.core import workspace
    from slmforge.core.fsutil import atomic_dir, write_json
    from slmforge.core.runtime import set_threads

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    teacher_dir = Path(cfg.teacher)
    if not (teacher_dir / META).exists() or (teacher_dir / "model.onnx").exists():
        raise SlmError(f"{cfg.teacher} is not a torch classifier from `slm classify train`")
    arch = json.loads((teacher_dir / META).read_text()).get("arch", "encoder")
    if arch != "encoder":
        raise SlmError(f"{cfg.teacher} is a {arch} classifier: pruning and distilling are for encoders")
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite and any(out.iterdir()):
        raise SlmError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
    if cfg.layers is not None and cfg.layers < 1:
        raise SlmError("--layers must be at least 1")
    if not 0 <= cfg.alpha <= 1 or cfg.temperature <= 0:
        raise SlmError("--alpha must be in [0, 1] and --temperature positive")
    set_threads(cfg.threads)
    meta = json.loads((teacher_dir / META).read_text())
    tcfg = meta.get("config", {})
    text_col = cfg.text_col or meta.get("text_col", "text")
    label_col = cfg.label_col or meta.get("label_col", "label")
    label_names: list[str] = meta["labels"]
    texts, labels = read_examples(cfg.data, text_col, label_col, tcfg.get("encoding", "utf-8"))
    unseen = sorted(set(labels) - set(label_names))
    if unseen:
        raise SlmError(f"{cfg.data} has labels the teacher does not know: {', '.join(unseen[:5])}")
    train_idx, val_idx = stratified_split(labels, tcfg.get("val_fraction", 0.1), tcfg.get("seed", 0))
    if meta.get("validation") == "none":  # a few-shot teacher took no validation split
        train_idx, val_idx, val_texts, val_labels = list(range(len(texts))), [], [], []
    elif tcfg.get("val"):
        train_idx, val_idx = list(range(len(texts))), []
        val_texts, val_labels = read_examples(tcfg["val"], text_col, label_col, tcfg.get("encoding", "utf-8"))
    else:
        val_texts, val_labels = [texts[i] for i in val_idx], [labels[i] for i in val_idx]
    train_texts = [texts[i] for i in train_idx]
    label_id = {n: i for i, n in enumerate(label_names)}
    y_train = np.array([label_id[labels[i]] for i in train_idx])
    y_val = np.array([label_id[y] for y in val_labels])
    extra = read_unlabeled(cfg.unlabeled, text_col) if cfg.unlabeled else []
    seed_everything(cfg.seed)

    # the teacher's logits, once
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    teacher_tok = AutoTokenizer.from_pretrained(teacher_dir)
    max_len = meta["max_len"]
    all_texts = train_texts + extra
    teacher_logits = logits_of(teacher, tokenize(teacher_tok, all_texts, max_len))
    teacher_val = logits_of(teacher, tokenize(teacher_tok, val_texts, max_len)) if val_texts else None
    teacher_params = sum(p.numel() for p in teacher.parameters())

    # the student
    if cfg.student is None:
        student, tokenizer = teacher, teacher_tok
    else:
        student, tokenizer, _ = build_classifier(cfg.student, label_names)
    if cfg.layers is not None:
        drop_layers(student, cfg.layers)
    if cfg.trim_vocab:
        student, tokenizer = trim_vocab(student, tokenizer, all_texts + val_texts)
    train_ids = tokenize(tokenizer, all_texts, max_len)
    val_ids = tokenize(tokenizer, val_texts, max_len)
    if cfg.student is not None:  # a fresh head: start from a logistic regression on its frozen features
        fit_linear_head(
            embed(student, train_ids[: len(train_texts)]), y_train, len(label_names), cfg.seed
        ).load_into(student.classifier)
    y_all = np.concatenate([y_train, -np.ones(len(extra), dtype=int)])
    train_cfg = ClassifyTrainConfig(
        data=cfg.data,
        out=cfg.out,
        epochs=cfg.epochs,
        lr=cfg.lr,
        head_lr=cfg.head_lr,
        batch_size=cfg.batch_size,
        max_len=max_len,
        label_smoothing=0.0,
        patience=cfg.patience,
        seed=cfg.seed,
    )
    log: list[dict] = []
    if len(val_ids):
        before = logits_of(student.eval(), val_ids).argmax(1)
        log.append({"stage": "before_healing", "val_accuracy": float((before == y_val).mean())})
        say(progress, f"student before healing: val accuracy {log[-1]['val_accuracy']:.4f}")
    tuned = fine_tune(
        student,
        train_ids,
        y_all,
        val_ids,
        y_val,
        train_cfg,
        log,
        progress,
        teacher_logits,
        cfg.temperature,
        cfg.alpha,
    )
    student.eval()
    pred = logits_of(student, val_ids).argmax(1) if len(val_ids) else np.zeros(0, int)
    val_acc = float((pred == y_val).mean()) if len(y_val) else float("nan")
    teacher_acc = float((teacher_val.argmax(1) == y_val).mean()) if teacher_val is not None else float("nan")
    params = sum(p.numel() for p in student.parameters())
    new_meta = {
        **meta,
        "params": params,
        "compressed_from": str(teacher_dir),
        "compress_config": asdict(cfg),
    }
    if meta.get("oos") and meta["oos"].get("threshold") is not None and len(val_ids):
        scores = oos_score(logits_of(student, val_ids), meta["oos"]["score"])
        new_meta["oos"] = {
            **meta["oos"],
            "threshold": float(np.quantile(scores, meta["oos"]["val_flag_rate"])),
        }
    metrics = {
        "params": params,
        "params_vs_teacher": params / teacher_params,
        "accuracy": val_acc,
        "val_accuracy": val_acc,
        "val_macro_f1": macro_f1(y_val, pred, len(label_names)) if len(y_val) else float("nan"),
        "teacher_val_accuracy": teacher_acc,
        "layers": student.config.num_hidden_layers,
        "vocab_size": student.config.vocab_size,
        "best_epoch": tuned.best_epoch,
        "train_examples": len(train_ids),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        save_model(student, tokenizer, tmp)
        write_json(tmp / META, new_meta)
        with open(tmp / "train_log.jsonl", "w", encoding="utf-8") as f:
            for row in log:
                f.write(json.dumps(row) + "\n")
    kind = "distill" if cfg.student else "prune"
    workspace.register("model", out, source=f"{kind}:{teacher_dir}", metrics=metrics)
    return {"out": str(out), "epochs_run": tuned.epochs_run, **metrics}


def drop_layers(model, keep: int) -> list[int]:
    """Keep `keep` evenly spaced encoder layers (the first and the last among them); return their indices."""
    import torch

    layers = model.bert.encoder.layer
    n = len(layers)
    if keep > n:
        raise SlmError(f"the model has {n} layers; cannot keep {keep}")
    idx = sorted({int(round(x)) for x in np.linspace(0, n - 1, keep)}) if keep > 1 else [n - 1]
    model.bert.encoder.layer = torch.nn.ModuleList([layers[i] for i in idx])
    model.config.num_hidden_layers = len(idx)
    return idx


def trim_vocab(model, tokenizer, texts: list[str]):
    """Keep the tokens `texts` use, single characters and specials; return (model, new tokenizer)."""
    import torch
    from transformers import BertTokenizer

    vocab = tokenizer.get_vocab()
    used: set[int] = set(tokenizer.all_special_ids)
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        used.update(ids)
    for ch in string.printable.strip():
        for piece in (ch, "##" + ch):
            if piece in vocab:
                used.add(vocab[piece])
    keep = sorted(used)
    inverse = {i: t for t, i in vocab.items()}
    new_vocab = {inverse[i]: j for j, i in enumerate(keep)}
    new_tok = BertTokenizer(
        vocab=new_vocab,
        do_lower_case=getattr(tokenizer, "do_lower_case", True),
        model_max_length=tokenizer.model_max_length,
    )
    old = model.bert.embeddings.word_embeddings
    new = torch.nn.Embedding(len(keep), old.embedding_dim, padding_idx=new_vocab.get(tokenizer.pad_token))
    with torch.no_grad():
        new.weight.copy_(old.weight[torch.as_tensor(keep)])
    model.bert.embeddings.word_embeddings = new
    model.config.vocab_size = len(keep)
    model.config.pad_token_id = new_vocab.get(tokenizer.pad_token, 0)
    check = texts[:200]
    before = [[keep.index(i) for i in ids] for ids in tokenizer(check)["input_ids"]]
    if new_tok(check)["input_ids"] != before:
        raise SlmError("vocabulary trimming changed how training texts tokenize; use --no-trim-vocab")
    return model, new_tok


def read_unlabeled(path: str, text_col: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"unlabeled file {path} does not exist")
    if p.suffix.lower() == ".txt":
        try:
            return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise SlmError(f"{path} is not valid utf-8") from None
    import csv

    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(p.read_text(encoding="utf-8-sig").splitlines())
        if text_col not in (reader.fieldnames or []):
            raise SlmError(
                f"{path} has no column {text_col!r}; columns found: {', '.join(reader.fieldnames or [])}"
            )
        return [r[text_col].strip() for r in reader if (r.get(text_col) or "").strip()]
    rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [str(r[text_col]).strip() for r in rows if str(r.get(text_col, "")).strip()]
