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
  folds a LoRA adapter into its base; `slmforge.infer.model_dirs.load_finetuned` loads any of the three.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir, check_replaceable, sha256_file, write_json
from slmforge.data import sft_data
from slmforge.infer.model_dirs import BASE_FILE, base_fingerprint
from slmforge.infer.model_dirs import load_base as _load_base  # distill, merge and the tests import these two
from slmforge.infer.model_dirs import quiet as _quiet  # from here under these names
from slmforge.lm.configs import FinetuneConfig
from slmforge.train import checkpoint

METHODS = ("full", "lora", "prompt-tuning")
DEFAULT_LR = {"full": 5e-5, "lora": 2e-4, "prompt-tuning": 3e-2}


# Fields that may differ between a run and its resumption; every other field must match exactly.
RESUMABLE_CHANGES = {
    "resume",
    "overwrite",
    "max_minutes",
    "threads",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "device",
}


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
    from slmforge.lm.ladder import head_flops_per_token
    from slmforge.lm.pretrain import _flops_per_token, _lr_at, _optimizer, _StopFlag, _truncate_metrics
    from slmforge.train.metrics import peak_flops
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
    tokenizer = _load_tokenizer(base, cfg.chat_template)
    model = _load_base(base, cfg.model)
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
    optimizer = _optimizer(model, lr, cfg.weight_decay, device)

    # ---- resume or start
    selected = cfg.method != "prompt-tuning" and _selected_logits_match(model, rows, pad_id, device)
    base_config = _base_config(model)
    flops_tok = _flops_per_token(base_config, seq_len)
    # the output head runs on the labelled positions only when `selected` (unless the loss needs every row)
    head_flops = 0
    if selected and not getattr(loss_fn, "full_head", False):
        head_flops = head_flops_per_token(base_config.hidden_size, base_config.vocab_size)
    peak = peak_flops(device, amp or torch.float32, threads)  # a first, uncached call draws random matrices
    torch.manual_seed(cfg.seed)  # so the loop's RNG (dropout) starts from the seed, or from the checkpoint
    step, elapsed_before = 0, 0.0
    if cfg.resume:
        state = checkpoint.load_latest(out)
        if state is not None:
            _load_trainable(model, state["trainable"])
            optimizer.load_state_dict(state["optimizer"])
            step, elapsed_before = state["step"], state["elapsed_s"]
            checkpoint.restore_rng(state["rng"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", dataclasses.asdict(cfg))
    _truncate_metrics(out / "metrics.jsonl", step)
    log = StepLogger(out, True, total_steps, progress, cfg.log_every)
    if log._bar is not None:
        log._bar.update(description="finetune")
    log.header(params, total_steps, global_batch * seq_len, amp, threads, 1, step)
    log.note(f"method {cfg.method}: {n_trainable:,} trainable parameters ({100 * n_trainable / params:.2f}%)")

    # ---- fit
    stop = _StopFlag()
    ctx = torch.autocast(device_type=device.type, dtype=amp) if amp else nullcontext()
    t_start = time.perf_counter()
    first_loss = loss_value = float("nan")
    val_metrics = None
    tokens_seen = 0
    while step < total_steps:
        t0 = time.perf_counter()
        elapsed = elapsed_before + (t0 - t_start)
        if cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60:
            log.note(f"time budget of {cfg.max_minutes} min reached at step {step}")
            break
        lr_now = _lr_at(step, total_steps, warmup, lr, cfg.min_lr_ratio, elapsed, cfg.max_minutes)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        batch = [rows[i] for i in batch_windows(step, global_batch, len(rows), cfg.seed)]
        loss_value, n_tokens, n_targets = _train_step(
            model, batch, cfg, pad_id, device, ctx, selected, loss_fn
        )
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss_value):
            raise SlmError(f"loss became {loss_value} at step {step + 1}; lower --lr or use --precision fp32")
        step += 1
        first_loss = loss_value if math.isnan(first_loss) else first_loss
        tokens_seen += n_tokens
        dt = time.perf_counter() - t0
        elapsed = elapsed_before + (time.perf_counter() - t_start)
        log.step(
            step,
            loss_value,
            lr_now,
            float(grad_norm),
            dt,
            n_tokens,
            flops_tok - head_flops * (1 - n_targets / max(1, n_tokens)),
            peak,
            elapsed,
            cfg.max_minutes,
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
    elapsed = elapsed_before + (time.perf_counter() - t_start)
    if log.last_ckpt_step != step:
        _save_checkpoint(out, model, optimizer, step, elapsed)

    # ---- save
    model.eval()
    base_info = {"name": cfg.model, "path": _abs(base), "shape": fingerprint}
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
    return FinetuneResult(
        str(out), str(model_dir), cfg.method, step, tokens_seen, first_loss, loss_value, val_metrics,
        elapsed, params, n_trainable, stats.examples, eos_ids,
    )  # fmt: skip


# ----------------------------------------------------------------------------- loading


def check_full_precision(path: str, name: str, advice: str) -> None:
    """SlmError unless `path` holds full-precision transformers weights (not GGUF, ONNX or a quantised config)."""
    p = Path(path)
    if not p.exists():
        return  # a hub id: transformers checks it when loading
    what = _quantised(p)
    if what:
        raise SlmError(f"{name} is {what}; {advice}")


def _quantised(p: Path) -> str | None:
    if p.is_file():
        return "a GGUF file (quantised)" if p.suffix == ".gguf" else "a file, not a model directory"
    config = p / "config.json"
    if config.exists():
        try:
            qc = json.loads(config.read_text()).get("quantization_config")
        except ValueError:
            qc = None
        if qc:
            return (
                f"quantised ({qc.get('quant_method', 'quantization_config') if isinstance(qc, dict) else qc})"
            )
    weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
    if not weights and any(p.glob("*.onnx")):
        return "an ONNX export (possibly quantised), not trainable transformers weights"
    if not weights and any(p.glob("*.gguf")):
        return "a GGUF model (quantised)"
    return None


# ----------------------------------------------------------------------------- helpers


def _validate(cfg: FinetuneConfig, out: Path) -> FinetuneConfig:
    """Check the config; on --resume, fields left at their defaults take the run's saved values."""
    if cfg.resume:
        cfg = _resume_config(cfg, out)
    elif out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise SlmError(
            f"{out} already holds a run: pass --resume to continue it or --overwrite to start over"
        )
    if cfg.method not in METHODS:
        raise SlmError(f"--method must be one of {', '.join(METHODS)}, not {cfg.method!r}")
    for path in (cfg.data, cfg.val_data, cfg.chat_template):
        if path is not None and not Path(path).is_file():
            raise SlmError(f"{path} does not exist")
    for name in (
        "seq_len",
        "batch_size",
        "grad_accum",
        "eval_every",
        "checkpoint_every",
        "log_every",
        "lora_r",
        "virtual_tokens",
    ):
        if getattr(cfg, name) < 1:
            raise SlmError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise SlmError("--max-steps must be at least 1")
    if cfg.epochs <= 0 or (cfg.max_minutes is not None and cfg.max_minutes <= 0):
        raise SlmError("--epochs and --max-minutes must be positive")
    if cfg.lr is not None and not 0 < cfg.lr < 1:
        raise SlmError(f"--lr {cfg.lr} is out of range (0, 1)")
    if not 0 <= cfg.lora_dropout < 1:
        raise SlmError(f"--lora-dropout must be in [0, 1), not {cfg.lora_dropout}")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise SlmError(f"--precision must be auto, bf16 or fp32, not {cfg.precision!r}")
    if cfg.on_bad_line not in ("stop", "skip"):
        raise SlmError(f"--on-bad-line must be stop or skip, not {cfg.on_bad_line!r}")
    if cfg.on_long not in ("truncate", "error"):
        raise SlmError(f"--on-long must be truncate or error, not {cfg.on_long!r}")
    if cfg.method == "prompt-tuning" and cfg.virtual_tokens >= cfg.seq_len:
        raise SlmError(f"--virtual-tokens {cfg.virtual_tokens} leaves no room in --seq-len {cfg.seq_len}")
    if not cfg.resume and out.exists() and cfg.overwrite:
        import shutil

        check_replaceable(out)  # --overwrite removes only a run slmforge made
        shutil.rmtree(out)
    return cfg


def _resume_config(cfg: FinetuneConfig, out: Path) -> FinetuneConfig:
    if not (out / "config.json").exists():
        raise SlmError(f"nothing to resume: {out} holds no run (drop --resume to start one)")
    saved = json.loads((out / "config.json").read_text())
    defaults = FinetuneConfig(model=cfg.model, data=cfg.data, out=cfg.out)
    for f in dataclasses.fields(cfg):
        if f.name not in RESUMABLE_CHANGES and getattr(cfg, f.name) == getattr(defaults, f.name):
            cfg = dataclasses.replace(cfg, **{f.name: saved.get(f.name, getattr(cfg, f.name))})
    mine = dataclasses.asdict(cfg)
    changed = sorted(k for k in mine if k not in RESUMABLE_CHANGES and saved.get(k) != mine[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {mine[k]!r}" for k in changed)
        raise SlmError(f"--resume with a different config ({detail}); use the run's original settings")
    return cfg


def _load_tokenizer(base: str, template_file: str | None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as e:
        raise SlmError(f"cannot load the tokenizer of {base} ({str(e).splitlines()[0]})") from None
    if template_file:
        tokenizer.chat_template = Path(template_file).read_text(encoding="utf-8")
    return tokenizer


def _rows(cfg: FinetuneConfig, path: str, tokenizer, room: int, stop_ids: list[int]):
    examples, stats = sft_data.load_sft(path, tokenizer, room, cfg.on_bad_line, cfg.on_long, stop_ids)
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
    peft_cfg.base_model_name_or_path = _abs(base)
    try:
        with _quiet():
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
        base = _base_model(model)
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


def _base_config(model):
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config


def _trainable_state(model) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model, state: dict) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        raise SlmError(
            "the checkpoint's trainable weights do not match this model; start again without --resume"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def _save_checkpoint(out: Path, model, optimizer, step: int, elapsed: float) -> None:
    state = {
        "trainable": _trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "elapsed_s": elapsed,
        "rng": checkpoint.rng_state(),
    }
    checkpoint.save(out, step, state)


def _generation_config(model, eos_ids: list[int], pad_id: int):
    import copy

    from transformers import GenerationConfig

    gen = copy.deepcopy(getattr(model, "generation_config", None)) or GenerationConfig()
    gen.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    gen.pad_token_id = pad_id
    if gen.bos_token_id is None:
        gen.bos_token_id = _base_config(model).bos_token_id
    return gen


def _save(model, tokenizer, eos_ids: list[int], pad_id: int, out: Path, method: str, base_info: dict) -> Path:
    """Write model/ (full) or adapter/ atomically: complete or absent."""
    gen = _generation_config(_base_model(model), eos_ids, pad_id)
    target = out / ("model" if method == "full" else "adapter")
    with atomic_dir(target, overwrite=True) as tmp, _quiet():
        if method == "full":
            model.generation_config = gen
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            write_json(tmp / BASE_FILE, base_info)
        gen.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _abs(path: str) -> str:
    p = Path(path)
    return str(p.resolve()) if p.exists() else path
