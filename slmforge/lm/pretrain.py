"""Pretrain a Llama-architecture model from scratch on the depth ladder, or continue pretraining any HF causal LM.

`pretrain(cfg)` reads top to bottom: validate → set up (tokenizer, token shards, model, optimizer) →
resume → fit (one log line per step, val loss / bits-per-byte on a schedule, atomic checkpoints) →
save a plain HF model directory. The same function runs under `torchrun` (DDP: gloo on CPU, nccl on GPU).

Data order depends only on (seed, step), and checkpoints hold model, optimizer, step, elapsed time and
RNG states, so a run killed at any moment resumes with exactly the losses it would have had.
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from slmforge.core import workspace
from slmforge.core.distributed import Dist
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir, write_json
from slmforge.lm.configs import PretrainConfig
from slmforge.train import checkpoint, loop
from slmforge.train.run import check_run_block, clear_run_dir, open_run
from slmforge.train.telemetry import StepLogger


@dataclass
class RunResult:
    out: str
    model_dir: str
    steps: int
    tokens: int
    train_loss: float
    val: dict | None
    elapsed_s: float
    params: int


def pretrain(cfg: PretrainConfig, progress: bool = True) -> RunResult:
    from transformers import AutoTokenizer

    from slmforge.core.runtime import autocast_dtype, free_cores, set_threads
    from slmforge.data.tokens import open_windows, prepare_tokens

    dist = _init_distributed(cfg.device)
    out = Path(cfg.out)
    cfg = _validate(cfg, out, world=dist.world)
    device = dist.device
    threads = set_threads(cfg.threads or max(1, free_cores() // dist.local_world))
    amp = autocast_dtype(device, cfg.precision) if device.type != "mps" else None
    torch.manual_seed(cfg.seed)

    # ---- tokenizer, data, model
    if cfg.init:
        from slmforge.core.hub import resolve_model

        source = resolve_model(cfg.init)
        tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        source = None
        tokenizer = _load_tokenizer(cfg.tokenizer)
    cache = (
        prepare_tokens(cfg.data, tokenizer, progress=progress and dist.rank == 0) if dist.rank == 0 else None
    )
    cache = dist.broadcast_path(cache)
    train = open_windows(cache, "train", cfg.seq_len)
    val = open_windows(cache, "val", cfg.seq_len)
    if train is None or len(train) == 0:
        raise SlmError(
            f"{cfg.data} has fewer training tokens than one sequence of {cfg.seq_len}; add data or lower --seq-len"
        )

    model, spec = _build_model(cfg, tokenizer, source)
    params = sum(p.numel() for p in model.parameters())
    batch_size = cfg.batch_size or 16
    _check_memory(params, batch_size, cfg.seq_len, model.config, device)
    model.to(device)
    lr = cfg.lr or (spec.lr if spec else 3e-5)
    global_batch = batch_size * cfg.grad_accum * dist.world
    tokens_per_step = global_batch * cfg.seq_len
    total_steps = _total_steps(cfg, spec, tokens_per_step, len(train))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(200, max(1, total_steps // 20))
    optimizer = loop.adamw(model, lr, cfg.weight_decay)

    # ---- resume or start
    step, elapsed_before = 0, 0.0
    if cfg.resume:
        step, elapsed_before = checkpoint.resume_training(
            out, optimizer, lambda state: model.load_state_dict(state["model"])
        )
    if dist.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {**dataclasses.asdict(cfg), "world_size": dist.world})
        loop.truncate_metrics(out / "metrics.jsonl", step)
    train_model = model
    if cfg.compile:
        train_model = torch.compile(model)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(train_model)

    from slmforge.train.metrics import flops_per_token, lm_loss, peak_flops

    flops_tok = flops_per_token(model.config, cfg.seq_len)
    peak = peak_flops(device, amp or torch.float32, threads) * dist.world
    log = StepLogger(out, dist.rank == 0, total_steps, progress, cfg.log_every)
    log.header(params, total_steps, tokens_per_step, amp, threads, dist.world, step)

    # ---- fit
    stop = loop.StopFlag()
    val_metrics = None
    ctx = torch.autocast(device_type=device.type, dtype=amp) if amp else nullcontext()
    clock = loop.Clock(elapsed_before)
    loss_value = float("nan")
    from slmforge.data.tokens import batch_windows

    while step < total_steps:
        t0 = time.perf_counter()
        if clock.out_of_time(cfg.max_minutes):
            break
        lr_now = loop.lr_at(step, total_steps, warmup, lr, cfg.min_lr_ratio, clock.elapsed(), cfg.max_minutes)
        loop.set_lr(optimizer, lr_now)
        indices = batch_windows(step, global_batch, len(train), cfg.seed)
        mine = indices[
            dist.rank * batch_size * cfg.grad_accum : (dist.rank + 1) * batch_size * cfg.grad_accum
        ]
        loss_sum = _train_step(train_model, train, mine, batch_size, cfg.grad_accum, dist, ctx)
        grad_norm = loop.optimizer_step(optimizer, model.parameters(), cfg.grad_clip)
        loss_value = dist.mean(loss_sum / cfg.grad_accum)
        loop.check_finite(loss_value, step)
        step += 1
        dt = time.perf_counter() - t0
        elapsed = clock.elapsed()
        log.step(
            step,
            loss_value,
            lr_now,
            grad_norm,
            dt,
            tokens_per_step,
            flops_tok,
            peak,
            elapsed,
            cfg.max_minutes,
        )
        last = step == total_steps or stop.requested
        if val is not None and (step % cfg.eval_every == 0 or last):
            val_metrics = lm_loss(model, val, cfg.eval_windows, batch_size, amp, device)
            log.val(step, val_metrics)
        if step % cfg.checkpoint_every == 0 or last:
            _save_checkpoint(out, dist, model, optimizer, step, elapsed)
        if stop.requested:
            log.note("stopping on signal; checkpoint saved, continue with --resume")
            break
    elapsed = clock.elapsed()
    if val is not None and (val_metrics is None or log.last_val_step != step):
        val_metrics = lm_loss(model, val, cfg.eval_windows, batch_size, amp, device)
        log.val(step, val_metrics)
    if log.last_ckpt_step != step:
        _save_checkpoint(out, dist, model, optimizer, step, elapsed)
        log.last_ckpt_step = step

    # ---- save a plain HF model directory
    model_dir = out / "model"
    if dist.rank == 0:
        _save_model(model, tokenizer, model_dir)
        log.plot()
        metrics = {
            "steps": step,
            "train_loss": loss_value,
            "params": params,
            "tokens": step * tokens_per_step,
            "elapsed_s": round(elapsed, 1),
        }
        if val_metrics:
            metrics.update(
                val_loss=val_metrics["loss"],
                val_bpb=val_metrics["bpb"],
                val_perplexity=val_metrics["perplexity"],
            )
        _register(cfg, out, model_dir, metrics)
    dist.barrier()
    dist.close()
    log.close()
    return RunResult(
        str(out), str(model_dir), step, step * tokens_per_step, loss_value, val_metrics, elapsed, params
    )


# ----------------------------------------------------------------------------- helpers


def launch(cfg: PretrainConfig, procs: int, argv: list[str]) -> int:
    """Run `slm pretrain` as `procs` data-parallel processes under torchrun, one thread each.

    On CPU, torch's intra-op threads scale poorly on the small matrices of small models: one process per
    core beats one process with a thread per core (see BENCHMARKS.md). The config is checked here first so
    bad input fails once, with one line, before any worker starts.
    """
    import subprocess
    import sys

    from slmforge.core.runtime import free_cores

    if procs < 1:
        raise SlmError("--procs must be at least 1")
    if procs > free_cores():
        raise SlmError(f"--procs {procs} is more than the {free_cores()} free cores")
    _validate(cfg, Path(cfg.out), world=procs, dry_run=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={procs}",
        "-m",
        "slmforge.cli",
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, free_cores() // procs))}
    return subprocess.run(cmd, env=env).returncode


def _validate(cfg: PretrainConfig, out: Path, world: int = 1, dry_run: bool = False) -> PretrainConfig:
    """Check the config; on --resume, fields left at their defaults take the run's saved values."""
    cfg = open_run(cfg, out, world_size=world)
    if not Path(cfg.data).is_dir():
        raise SlmError(f"dataset {cfg.data} does not exist (make one with `slm data ingest`)")
    if cfg.init is None and cfg.tokenizer is None:
        raise SlmError("give --tokenizer DIR for a fresh model, or --init MODEL to continue pretraining one")
    if cfg.init is not None and cfg.tokenizer is not None:
        raise SlmError("--tokenizer cannot be combined with --init: the model's own tokenizer is used")
    check_run_block(cfg)
    for name in ("seq_len", "grad_accum", "eval_windows"):
        if getattr(cfg, name) < 1:
            raise SlmError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("batch_size", "tokens"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise SlmError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.lr is not None and not 0 < cfg.lr < 1:
        raise SlmError(f"--lr {cfg.lr} is out of range (0, 1)")
    if cfg.init is None:
        from slmforge.lm.ladder import depth_from

        depth_from(cfg.depth)
    if not dry_run and not cfg.resume and out.exists() and int(os.environ.get("RANK", 0)) == 0:
        clear_run_dir(out)  # --overwrite removes only a run slmforge made
    return cfg


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise SlmError(f"tokenizer {path} does not exist (train one with `slm tokenizer train`)")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise SlmError(f"{path} is not a tokenizer directory ({str(e).splitlines()[0]})") from e


def _build_model(cfg: PretrainConfig, tokenizer, source: str | None):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from slmforge.lm.ladder import build_config, depth_from, ladder

    if source is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise SlmError(f"cannot load {cfg.init} as a causal LM ({str(e).splitlines()[0]})") from e
        if getattr(model.config, "quantization_config", None):
            raise SlmError(f"{cfg.init} is quantised; continue pretraining from its full-precision weights")
        return model, None
    spec = ladder(depth_from(cfg.depth), len(tokenizer), cfg.seq_len)
    config = build_config(
        spec, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    model = LlamaForCausalLM(config)
    return model, spec


def _check_memory(params: int, batch_size: int, seq_len: int, config, device) -> None:
    from slmforge.lm.ladder import estimate_train_bytes

    need = estimate_train_bytes(
        params, batch_size, seq_len, config.hidden_size, config.num_hidden_layers, config.vocab_size
    )
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_ram()
    if free and need > free:
        raise SlmError(
            f"this model ({params / 1e6:.0f}M parameters, batch {batch_size} × {seq_len}) needs about "
            f"{need / 2**30:.1f} GiB to train but only {free / 2**30:.1f} GiB is free; lower --depth or --batch-size"
        )


def _available_ram() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _total_steps(cfg: PretrainConfig, spec, tokens_per_step: int, n_windows: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    if cfg.tokens is not None:
        return max(1, cfg.tokens // tokens_per_step)
    if spec is not None:
        return max(1, spec.token_budget // tokens_per_step)
    return max(1, n_windows * cfg.seq_len // tokens_per_step)  # --init: one epoch of the data


def _train_step(train_model, train, mine, batch_size: int, grad_accum: int, dist, ctx) -> torch.Tensor:
    """Forward/backward over this process's micro-batches of the step (windows `mine`): the summed loss.
    Under DDP the gradients are averaged across processes once, on the last micro-batch."""
    loss_sum = torch.zeros((), device=dist.device)
    for micro in range(grad_accum):
        batch = torch.from_numpy(train.batch(mine[micro * batch_size : (micro + 1) * batch_size]))
        batch = batch.to(dist.device)
        sync = nullcontext() if dist.world == 1 or micro == grad_accum - 1 else train_model.no_sync()
        with sync:
            with ctx:
                logits = train_model(input_ids=batch[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            (loss / grad_accum).backward()
        loss_sum += loss.detach()
    return loss_sum


def _register(cfg: PretrainConfig, out: Path, model_dir: Path, metrics: dict) -> None:
    """Record the run and its model in the workspace, with the dataset's hash."""
    data_hash = workspace.read_manifest(cfg.data).get("data_hash")
    workspace.register(
        "run", out, source=cfg.init or f"depth {cfg.depth}", data_hash=data_hash, metrics=metrics
    )
    workspace.register(
        "model", model_dir, name=f"{out.name}/model", source=str(out), data_hash=data_hash, metrics=metrics
    )


def _save_checkpoint(out: Path, dist, model, optimizer, step: int, elapsed: float) -> None:
    if dist.rank == 0:
        checkpoint.save_training(out, step, elapsed, optimizer, model=model.state_dict())
    dist.barrier()


def _save_model(model, tokenizer, model_dir: Path) -> None:
    from transformers import GenerationConfig

    with atomic_dir(model_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        eos = model.config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        gen = GenerationConfig(
            bos_token_id=model.config.bos_token_id,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        )
        gen.save_pretrained(tmp)


def _init_distributed(device_flag: str) -> Dist:
    return Dist(device_flag)
