"""The torch side of `slm classify train`: end-to-end fine-tuning for a step budget with validation and
early stopping (`fine_tune`), SetFit-style contrastive tuning (`contrastive_tune`), and the batching,
embedding and seeding helpers they share (the logistic-regression head is `slmforge.clf.head`).
`slmforge.clf.train` decides what to run and what to ship; this module only trains."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np

from slmforge.clf.configs import ClassifyTrainConfig
from slmforge.clf.evaluate import macro_f1
from slmforge.core.errors import SlmError
from slmforge.core.progress import bar, say

PASSES, MIN_STEPS, MAX_STEPS = 5, 500, 3000
"""The default budget: PASSES passes over the training set, clamped to [MIN_STEPS, MAX_STEPS] steps."""
VALIDATIONS, MIN_VALIDATIONS = 10, 5
"""The default schedule validates every pass, or every budget / VALIDATIONS steps when that is longer, and at
least MIN_VALIDATIONS times (a pass longer than budget / MIN_VALIDATIONS steps is not waited for)."""


def step_budget(n_train: int, cfg: ClassifyTrainConfig) -> tuple[int, int, str]:
    """(optimizer steps, steps between validations, the sentence the log prints about them)."""
    per_pass = max(1, math.ceil(n_train / cfg.batch_size))
    if cfg.epochs is not None:
        total, why = per_pass * cfg.epochs, f"--epochs {cfg.epochs} x {per_pass} steps a pass"
    elif cfg.steps is not None:
        total, why = cfg.steps, "--steps"
    else:
        passes = PASSES * per_pass
        total = min(max(passes, MIN_STEPS), MAX_STEPS)
        why = f"{PASSES} passes of {per_pass} steps = {passes}"
        if total != passes:
            why += f", {'raised to the floor' if passes < MIN_STEPS else 'capped at the ceiling'} of {total}"
    if cfg.eval_every is not None:
        every = min(cfg.eval_every, total)
    elif cfg.epochs is not None:
        every = per_pass
    else:
        every = min(max(per_pass, math.ceil(total / VALIDATIONS)), math.ceil(total / MIN_VALIDATIONS))
    text = (
        f"budget: {total} optimizer step{'s' * (total != 1)} ({why}; {total / per_pass:.1f} passes over "
        f"{n_train:,} texts); validation every {every} step{'s' * (every != 1)}, stopping after "
        f"{cfg.patience} without improvement"
    )
    return total, every, text


@dataclass
class Tuned:
    """What `fine_tune` did: the best validation's step (0: the starting weights) and the steps run."""

    best_step: int
    steps: int
    steps_per_epoch: int

    @property
    def best_epoch(self) -> float:
        return _passes(self.best_step, self.steps_per_epoch)

    @property
    def epochs_run(self) -> float:
        return _passes(self.steps, self.steps_per_epoch)


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
) -> Tuned:
    """End-to-end training for `step_budget` steps; leaves the best validation's weights loaded.

    With `teacher_logits` (one row per training text) the loss is `alpha` x the distillation KL at
    `temperature` (x T², Hinton et al.) + (1 - `alpha`) x cross-entropy; label -1 marks unlabeled texts.
    """
    import torch
    import torch.nn.functional as F

    rng = random.Random(cfg.seed)
    per_pass = max(1, math.ceil(len(train_ids) / cfg.batch_size))
    total, every, budget_text = step_budget(len(train_ids), cfg)
    say(progress, budget_text)
    log.append({"stage": "budget", "steps": total, "eval_every": every, "text": budget_text})
    warmup = max(1, int(cfg.warmup_fraction * total))
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg.weight_decay)
    for g in optimizer.param_groups:
        g["peak_lr"] = g["lr"]
    labels_t = torch.as_tensor(y_train)
    teacher_t = torch.as_tensor(teacher_logits) if teacher_logits is not None else None
    best_acc, best_step, best_state, stale, step = -1.0, 0, None, 0, 0
    best_tuned = (
        -1.0
    )  # patience counts from the first tuned validation: the first steps may dip below the start
    if initial_val_accuracy is not None and len(val_ids):  # the starting point is a candidate too (step 0)
        best_acc = initial_val_accuracy
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    started = time.perf_counter()
    seen, loss_sum, window_started = 0, 0.0, started
    stop = False
    with bar("fine-tune", total=total, enabled=progress) as b:
        while not stop and step < total:
            model.train()
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
                b.update(rate=_rate_text(seen, now - window_started, loss_sum))
                b.advance(1)
                out_of_time = bool(cfg.max_minutes and now - started > cfg.max_minutes * 60)
                if step % every and step < total and not out_of_time:
                    continue
                # a validation: log it, keep the best weights, count patience
                row = {
                    "step": step,
                    "epoch": _passes(step, per_pass),
                    "train_loss": loss_sum / max(seen, 1),
                    "seconds": time.perf_counter() - started,
                }
                if len(val_ids):
                    model.eval()
                    pred = logits_of(model, val_ids).argmax(1)
                    model.train()
                    row["val_accuracy"] = float((pred == y_val).mean())
                    row["val_macro_f1"] = macro_f1(y_val, pred, model.config.num_labels)
                log.append(row)
                say(
                    progress,
                    f"step {step}/{total} (pass {row['epoch']:g}): train loss {row['train_loss']:.4f}"
                    + (
                        f", val accuracy {row['val_accuracy']:.4f}, macro-F1 {row['val_macro_f1']:.4f}"
                        if len(val_ids)
                        else ""
                    )
                    + f" ({row['seconds']:.0f} s)",
                )
                seen, loss_sum, window_started = 0, 0.0, time.perf_counter()
                acc = row.get("val_accuracy", float(step))  # without a val split the last step is kept
                if acc > best_acc:
                    best_acc, best_step = acc, step
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if acc > best_tuned:
                    best_tuned, stale = acc, 0
                else:
                    stale += 1
                    if stale >= cfg.patience and step < total:
                        say(progress, f"no better val accuracy for {stale} validations: stopping early")
                        stop = True
                if out_of_time:
                    say(progress, f"--max-minutes {cfg.max_minutes} reached")
                    stop = True
                if stop or step >= total:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    say(
        progress,
        f"best validation: step {best_step} of {step}"
        + (" (the starting weights)" if best_step == 0 else ""),
    )
    return Tuned(best_step, step, per_pass)


def contrastive_tune(model, ids, y, cfg: ClassifyTrainConfig, progress) -> None:
    """SetFit-style encoder tuning: (anchor, positive) pairs of one class per batch, other classes as negatives.

    Each batch draws distinct classes, so no in-batch negative shares the anchor's class; the loss is a
    symmetric InfoNCE on cosine similarities (scale 20), as in sentence-transformers' MultipleNegativesRankingLoss.
    """
    import torch
    import torch.nn.functional as F

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


# ---------------------------------------------------------------- batches, embeddings, heads


def tokenize(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids of each text, truncated to `max_len` (no padding: batches pad themselves)."""
    return tokenizer(texts, truncation=True, max_length=max_len)["input_ids"] if texts else []


def unknown_share(tokenizer, texts: list[str], unk_id: int | None = None, limit: int = 2000) -> float:
    """Share of the tokens of `texts` (the first `limit`, 512 tokens each, no special tokens) that the tokenizer
    could not represent: its unknown token, or a byte-fallback token (`<0xE4>`) of a SentencePiece/BPE one.

    `tokenizer` is a transformers tokenizer or a `tokenizers.Tokenizer` (then `unk_id` names its unknown id)."""
    import re

    texts = [t for t in texts[:limit] if t]
    if not texts:
        return 0.0
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    else:
        unk_id = tokenizer.unk_token_id
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=512)["input_ids"]
    byte = re.compile(r"<0x[0-9A-Fa-f]{2}>")
    bad = {i for t, i in tokenizer.get_vocab().items() if byte.fullmatch(t)}
    if unk_id is not None:
        bad.add(unk_id)
    total = sum(len(x) for x in ids)
    return sum(1 for x in ids for i in x if i in bad) / total if total else 0.0


def pad_batch(seqs: list[list[int]], pad_id: int = 0) -> dict:
    """Right-padded ids, attention mask and token type ids of one batch, as torch tensors."""
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
    """Logits of every text, batched by length (the model in eval mode)."""
    import torch

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = model(**pad_batch([ids[i] for i in idx])).logits.numpy()
    return out


def param_groups(model, cfg: ClassifyTrainConfig) -> list[dict]:
    """Layer-wise lr decay: top layer gets cfg.lr, each layer below `layer_decay` times less; head gets head_lr."""
    layers = model.bert.encoder.layer
    n = len(layers)
    groups = [{"params": list(model.classifier.parameters()), "lr": cfg.head_lr}]
    for i, layer in enumerate(layers):
        groups.append({"params": list(layer.parameters()), "lr": cfg.lr * cfg.layer_decay ** (n - 1 - i)})
    groups.append({"params": list(model.bert.embeddings.parameters()), "lr": cfg.lr * cfg.layer_decay**n})
    return groups


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _passes(steps: int, per_pass: int) -> float:
    """Steps as passes over the training set: an int when whole, else two decimals."""
    p = round(steps / per_pass, 2)
    return int(p) if p == int(p) else p


def _rate_text(seen: int, seconds: float, loss_sum: float) -> str:
    """The epoch bar's rate field: examples seen this epoch over this epoch's seconds, and the mean loss."""
    return f"{seen / max(seconds, 1e-9):.0f} ex/s loss {loss_sum / max(seen, 1):.3f}"
