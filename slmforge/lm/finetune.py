"""Supervised fine-tuning of causal LMs: full, LoRA or prompt tuning (PEFT) on chat or prompt/completion JSONL.

`finetune(cfg)` reads top to bottom: validate → load the full-precision base and its tokenizer → read,
template, mask and pack the data (slmforge.data.sft_data) → wrap the model for the method → fit with the
pretraining loop's telemetry, lr schedule, time budget and checksummed checkpoints → save.

Data order depends only on (seed, step), and checkpoints hold the trainable weights, optimizer, step,
elapsed time and RNG states, so a run killed at any moment resumes with the losses it would have had.

Output, inside the run directory `--out` (beside config.json, metrics.jsonl, loss.png and ckpt/):
- full: `model/`, a plain transformers directory (safetensors, config, tokenizer with chat template,
  generation_config.json whose EOS ids include the end-of-turn token, e.g. `<|im_end|>`);
- lora / prompt-tuning: `adapter/`, a PEFT adapter (adapter_config.json, adapter_model.safetensors) with
  the tokenizer, generation config and `base_model.json` (the base's name, path and shape). `slm merge`
  folds a LoRA adapter into its base; `load_finetuned` loads any of the three.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir, sha256_file, write_json
from slmforge.core.progress import quiet_hf
from slmforge.data import sft_data
from slmforge.lm.configs import FinetuneConfig
from slmforge.train import checkpoint, loop
from slmforge.train.adapters import BASE_FILE, base_fingerprint
from slmforge.train.pretrained import (
    base_config,
    base_model,
    check_full_precision,
    generation_config,
    load_base,
    load_tokenizer,
    local_path,
)
from slmforge.train.run import check_run_block, clear_run_dir, open_run

METHODS = ("full", "lora", "prompt-tuning")
DEFAULT_LR = {"full": 5e-5, "lora": 2e-4, "prompt-tuning": 3e-2}


@dataclass
class FinetuneResult:
    out: str
    model_dir: str
    """model/ (full) or adapter/ (lora, prompt-tuning)."""
    method: str
    steps: int
    tokens: int
    first_loss: float
    train_loss: float
    val: dict | None
    elapsed_s: float
    params: int
    trainable_params: int
    examples: int
    eos_token_ids: list[int]


def finetune(cfg: FinetuneConfig, progress: bool = True, loss_fn=None) -> FinetuneResult:
    """Fine-tune `cfg.model`; `loss_fn(model, batch, selected)`, if given, replaces the summed
    cross-entropy on the labelled tokens as the training loss (slmforge.lm.distill adds a teacher's KL)."""
    from slmforge.core.hub import resolve_model
    from slmforge.core.progress import stderr
    from slmforge.core.runtime import autocast_dtype, pick_device, set_threads
    from slmforge.data.tokens import batch_windows
    from slmforge.train.metrics import flops_per_token, head_flops_per_token, peak_flops
    from slmforge.train.telemetry import StepLogger

    out = Path(cfg.out)
    cfg = _validate(cfg, out)
    threads = set_threads(cfg.threads)
    device = pick_device(cfg.device)
    amp = autocast_dtype(device, cfg.precision)
    torch.manual_seed(cfg.seed)

    # ---- base model, tokenizer, data
    base = resolve_model(cfg.model)
    check_full_precision(base, cfg.model, "fine-tune the full-precision model, then quantise the result")
    tokenizer = load_tokenizer(base, cfg.chat_template)
    model = load_base(base, cfg.model)
    seq_len = min(cfg.seq_len, getattr(model.config, "max_position_embeddings", None) or cfg.seq_len)
    room = seq_len - (cfg.virtual_tokens if cfg.method == "prompt-tuning" else 0)
    stop_ids = sft_data.stop_token_ids(tokenizer, model.generation_config)
    rows, stats = _rows(cfg, cfg.data, tokenizer, room, stop_ids)
    stderr.print(stats.summary(cfg.data), highlight=False)
    val_rows = _rows(cfg, cfg.val_data, tokenizer, room, stop_ids)[0] if cfg.val_data else None
    eos_ids = sorted(set(stop_ids) | sft_data.turn_end_ids(rows, tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    fingerprint = base_fingerprint(model.config)

    # ---- method, optimizer, schedule
    model = _wrap(model, cfg, base)
    model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    global_batch = cfg.batch_size * cfg.grad_accum
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(rows) / global_batch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(100, max(1, total_steps // 20))
    lr = cfg.lr or DEFAULT_LR[cfg.method]
    optimizer = loop.adamw(model, lr, cfg.weight_decay)

    # ---- resume or start
    selected = cfg.method != "prompt-tuning" and _selected_logits_match(model, rows, pad_id, device)
    config = base_config(model)
    flops_tok = flops_per_token(config, seq_len)
    # the output head runs on the labelled positions only when `selected` (unless the loss needs every row)
    head_flops = 0
    if selected and not getattr(loss_fn, "full_head", False):
        head_flops = head_flops_per_token(config.hidden_size, config.vocab_size)
    peak = peak_flops(device, amp or torch.float32, threads)  # a first, uncached call draws random matrices
    torch.manual_seed(cfg.seed)  # so the loop's RNG (dropout) starts from the seed, or from the checkpoint
    step, elapsed_before = 0, 0.0
    if cfg.resume:
        step, elapsed_before = checkpoint.resume_training(
            out, optimizer, lambda state: loop.load_trainable(model, state["trainable"])
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(cfg))
    loop.truncate_metrics(out / "metrics.jsonl", step)
    log = StepLogger(out, True, total_steps, progress, cfg.log_every, name="finetune")
    log.header(params, total_steps, global_batch * seq_len, amp, threads, 1, step)
    log.note(f"method {cfg.method}: {n_trainable:,} trainable parameters ({100 * n_trainable / params:.2f}%)")

    # ---- fit
    stop = loop.StopFlag()
    ctx = torch.autocast(device_type=device.type, dtype=amp) if amp else nullcontext()
    clock = loop.Clock(elapsed_before)
    first_loss = loss_value = float("nan")
    val_metrics = None
    tokens_seen = 0
    while step < total_steps:
        t0 = time.perf_counter()
        if clock.out_of_time(cfg.max_minutes):
            log.note(f"time budget of {cfg.max_minutes} min reached at step {step}")
            break
        lr_now = loop.lr_at(step, total_steps, warmup, lr, cfg.min_lr_ratio, clock.elapsed(), cfg.max_minutes)
        loop.set_lr(optimizer, lr_now)
        batch = [rows[i] for i in batch_windows(step, global_batch, len(rows), cfg.seed)]
        loss_value, n_tokens, n_targets = _train_step(
            model, batch, cfg, pad_id, device, ctx, selected, loss_fn
        )
        grad_norm = loop.optimizer_step(optimizer, trainable, cfg.grad_clip)
        loop.check_finite(loss_value, step)
        step += 1
        first_loss = loss_value if math.isnan(first_loss) else first_loss
        tokens_seen += n_tokens
        dt = time.perf_counter() - t0
        elapsed = clock.elapsed()
        step_flops = flops_tok - head_flops * (1 - n_targets / max(1, n_tokens))
        log.step(
            step, loss_value, lr_now, grad_norm, dt, n_tokens, step_flops, peak, elapsed, cfg.max_minutes
        )
        last = step == total_steps or stop.requested
        if val_rows and (step % cfg.eval_every == 0 or last):
            val_metrics = masked_loss(
                model, val_rows, tokenizer, cfg.batch_size, pad_id, device, ctx, selected
            )
            log.val(step, val_metrics)
        if step % cfg.checkpoint_every == 0 or last:
            _save_checkpoint(out, model, optimizer, step, elapsed)
            log.last_ckpt_step = step
        if stop.requested:
            log.note("stopping on signal; checkpoint saved, continue with --resume")
            break
    elapsed = clock.elapsed()
    if log.last_ckpt_step != step:
        _save_checkpoint(out, model, optimizer, step, elapsed)

    # ---- save
    model.eval()
    base_info = {"name": cfg.model, "path": local_path(base), "shape": fingerprint}
    model_dir = _save(model, tokenizer, eos_ids, pad_id, out, cfg.method, base_info)
    log.plot()
    log.close()
    metrics = {
        "method": cfg.method,
        "steps": step,
        "first_loss": first_loss,
        "train_loss": loss_value,
        "params": params,
        "trainable_params": n_trainable,
        "tokens": tokens_seen,
        "examples": stats.examples,
        "elapsed_s": round(elapsed, 1),
    }
    if val_metrics:
        metrics.update(val_loss=val_metrics["loss"], val_bpb=val_metrics["bpb"])
    _register(cfg, out, model_dir, metrics)
    return FinetuneResult(
        str(out), str(model_dir), cfg.method, step, tokens_seen, first_loss, loss_value, val_metrics,
        elapsed, params, n_trainable, stats.examples, eos_ids,
    )  # fmt: skip


# ----------------------------------------------------------------------------- loading


# ----------------------------------------------------------------------------- helpers


def _validate(cfg: FinetuneConfig, out: Path) -> FinetuneConfig:
    """Check the config; on --resume, fields left at their defaults take the run's saved values."""
    cfg = open_run(cfg, out)
    if cfg.method not in METHODS:
        raise SlmError(f"--method must be one of {', '.join(METHODS)}, not {cfg.method!r}")
    for path in (cfg.data, cfg.val_data, cfg.chat_template):
        if path is not None and not Path(path).is_file():
            raise SlmError(f"{path} does not exist")
    check_run_block(cfg)
    for name in ("seq_len", "batch_size", "grad_accum", "lora_r", "virtual_tokens"):
        if getattr(cfg, name) < 1:
            raise SlmError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.epochs <= 0:
        raise SlmError("--epochs must be positive")
    if cfg.lr is not None and not 0 < cfg.lr < 1:
        raise SlmError(f"--lr {cfg.lr} is out of range (0, 1)")
    if not 0 <= cfg.lora_dropout < 1:
        raise SlmError(f"--lora-dropout must be in [0, 1), not {cfg.lora_dropout}")
    if cfg.on_bad_line not in ("stop", "skip"):
        raise SlmError(f"--on-bad-line must be stop or skip, not {cfg.on_bad_line!r}")
    if cfg.on_long not in ("truncate", "error"):
        raise SlmError(f"--on-long must be truncate or error, not {cfg.on_long!r}")
    if cfg.method == "prompt-tuning" and cfg.virtual_tokens >= cfg.seq_len:
        raise SlmError(f"--virtual-tokens {cfg.virtual_tokens} leaves no room in --seq-len {cfg.seq_len}")
    if not cfg.resume and out.exists() and cfg.overwrite:
        clear_run_dir(out)  # --overwrite removes only a run slmforge made
    return cfg


def _rows(cfg: FinetuneConfig, path: str, tokenizer, room: int, stop_ids: list[int]):
    examples, stats = sft_data.load_sft(
        path, tokenizer, room, cfg.on_bad_line, cfg.on_long, stop_ids, model=cfg.model
    )
    if cfg.pack and cfg.method != "prompt-tuning":
        return sft_data.pack(examples, room, cfg.seed), stats
    return examples, stats


def _wrap(model, cfg: FinetuneConfig, base: str):
    """The model to train: itself (full) or a PEFT model whose only trainable weights are the adapter's."""
    if cfg.method == "full":
        return model
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    if cfg.method == "lora":
        targets = (
            cfg.lora_targets
            if cfg.lora_targets == "all-linear"
            else [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
        )
        peft_cfg = LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout, target_modules=targets,
        )  # fmt: skip
    else:
        peft_cfg = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=cfg.virtual_tokens,
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
        )  # fmt: skip
    peft_cfg.base_model_name_or_path = local_path(base)
    try:
        with quiet_hf():
            return get_peft_model(model, peft_cfg)
    except ValueError as e:  # e.g. target modules not found in the model
        raise SlmError(
            f"cannot apply {cfg.method} to {cfg.model}: {str(e).strip().splitlines()[0]}"
        ) from None


def _train_step(
    model, batch: list, cfg: FinetuneConfig, pad_id: int, device, ctx, selected: bool = False, loss_fn=None
) -> tuple[float, int, int]:
    """Forward/backward over the step's micro-batches: (mean loss over its trained tokens, real tokens,
    trained tokens)."""
    loss_fn = loss_fn or _sum_nats
    micro = [batch[i : i + cfg.batch_size] for i in range(0, len(batch), cfg.batch_size)]
    targets = sum(sum(1 for t in r.labels[1:] if t != sft_data.IGNORE) for r in batch)
    total, tokens = 0.0, 0
    for rows in micro:
        b = {k: v.to(device) for k, v in sft_data.collate(rows, pad_id).items()}
        with ctx:
            nats = loss_fn(model, b, selected)
        (nats / max(1, targets)).backward()
        total += nats.item()
        tokens += int(b["attention_mask"].sum())
    return total / max(1, targets), tokens, targets


def _sum_nats(model, b: dict, selected: bool = False) -> torch.Tensor:
    """Summed next-token loss on labelled positions."""
    logits, targets = label_logits(model, b, selected)
    return F.cross_entropy(logits, targets, reduction="sum")


def label_logits(model, b: dict, selected: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(float logits [n, vocab], targets [n]) at the n labelled next-token positions of batch `b`
    (prompt-tuning logits carry the virtual tokens first).

    `selected` runs the LM head on the labelled positions only: the same logits, without the batch × length
    × vocabulary ones (with a 49k vocabulary and loss on ~15% of tokens, a fifth of the compute).
    """
    y = b["labels"][:, 1:]
    keep = y != sft_data.IGNORE
    if selected:
        base = base_model(model)
        hidden = base.get_decoder()(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False
        ).last_hidden_state
        return base.get_output_embeddings()(hidden[:, :-1][keep]).float(), y[keep]
    width = b["input_ids"].shape[1]
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
    return logits[:, -width:][:, :-1][keep].float(), y[keep]


@torch.no_grad()
def masked_loss(
    model, rows: list, tokenizer, batch_size: int, pad_id: int, device, ctx=None, selected: bool = False
) -> dict:
    """Mean loss on the trained (assistant) tokens of `rows`, with perplexity and bits per byte."""
    from slmforge.data.tokenizer import token_byte_lengths

    was_training = model.training
    model.eval()
    lengths = token_byte_lengths(tokenizer)
    nats, tokens, nbytes = 0.0, 0, 0
    for i in range(0, len(rows), batch_size):
        b = {k: v.to(device) for k, v in sft_data.collate(rows[i : i + batch_size], pad_id).items()}
        with ctx or nullcontext():
            nats += _sum_nats(model, b, selected).item()
        y = b["labels"][:, 1:]
        y = y[y != sft_data.IGNORE].cpu()
        tokens += y.numel()
        nbytes += int(lengths[y[y < len(lengths)]].sum())
    model.train(was_training)
    loss = nats / max(1, tokens)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50)),
        "bpb": nats / math.log(2) / max(1, nbytes),
        "tokens": tokens,
    }


@torch.no_grad()
def _selected_logits_match(model, rows: list, pad_id: int, device) -> bool:
    """Whether the head-on-labelled-positions loss equals the full forward's for this model (checked once)."""
    b = {k: v.to(device) for k, v in sft_data.collate(rows[:2], pad_id).items()}
    was_training = model.training
    model.eval()
    try:
        full, fast = _sum_nats(model, b).item(), _sum_nats(model, b, True).item()
    except (AttributeError, TypeError, NotImplementedError, RuntimeError):
        return False
    finally:
        model.train(was_training)
    return abs(full - fast) <= 1e-4 * max(1.0, abs(full))


def _save_checkpoint(out: Path, model, optimizer, step: int, elapsed: float) -> None:
    checkpoint.save_training(out, step, elapsed, optimizer, trainable=loop.trainable_state(model))


def _register(cfg: FinetuneConfig, out: Path, model_dir: Path, metrics: dict) -> None:
    """Record the run and its model/ or adapter/ in the workspace, with the data file's hash."""
    data_hash = sha256_file(cfg.data)
    workspace.register("run", out, source=cfg.model, data_hash=data_hash, metrics=metrics)
    kind = "model" if cfg.method == "full" else "adapter"
    workspace.register(
        kind,
        model_dir,
        name=f"{out.name}/{model_dir.name}",
        source=cfg.model,
        data_hash=data_hash,
        metrics=metrics,
    )


def _save(model, tokenizer, eos_ids: list[int], pad_id: int, out: Path, method: str, base_info: dict) -> Path:
    """Write model/ (full) or adapter/ atomically: complete or absent."""
    gen = generation_config(base_model(model), eos_ids, pad_id)
    target = out / ("model" if method == "full" else "adapter")
    with atomic_dir(target, overwrite=True) as tmp, quiet_hf():
        if method == "full":
            model.generation_config = gen
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            write_json(tmp / BASE_FILE, base_info)
        gen.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
