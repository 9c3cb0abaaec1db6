"""slmforge's pretraining loop against HF `Trainer`, side by side in one run: same Llama config, same init,
same data in the same order, same optimizer settings and schedule, equal steps.

    python benchmarks/train_throughput.py                     # depths 4 (~5M) and 8 (~28M), 30 steps each
    python benchmarks/train_throughput.py --depths 4 --steps 20 --procs 1 --no-compile

HF Trainer runs as users run it (one process, torch's intra-op threads on every free core, fp32: on
AVX2-only CPUs bf16 is ~100x slower); slmforge runs as `slm pretrain --procs 2 --compile` at the same
global batch (--batch-size / procs per process), so the data order and the losses are the same.

Reports steady-state tokens/s (the first --skip steps excluded from both: they hold torch.compile's one-off
compilation and allocator warm-up), MFU against this machine's measured matmul peak, the mean loss of the
last 5 steps for each, and the ratio. The data defaults to Debian's python3.11-doc reST sources, ingested
and tokenised (8k BPE) once into the workspace cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

PYDOCS = "/usr/share/doc/python3.11/html/_sources"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="dataset dir (default: the Python docs, ingested once)")
    ap.add_argument("--tokenizer", help="tokenizer dir (default: an 8k BPE trained on --data once)")
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip", type=int, default=5, help="first steps excluded from tokens/s")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=None, help="threads for HF Trainer (default: free cores)")
    ap.add_argument("--procs", type=int, default=2, help="slm pretrain --procs (one thread each)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from slmforge.core.runtime import set_threads

    threads = set_threads(args.threads)
    data, tok = _inputs(args.data, args.tokenizer)
    rows = []
    for depth in args.depths:
        hf = _run_trainer(data, tok, depth, args)
        ours = _run_slmforge(data, tok, depth, args)
        rows.append(
            {
                "depth": depth,
                "params_m": ours["params"] / 1e6,
                "threads": threads,
                "trainer_tokens_per_s": hf["tokens_per_s"],
                "slmforge_tokens_per_s": ours["tokens_per_s"],
                "speedup": ours["tokens_per_s"] / hf["tokens_per_s"],
                "trainer_final_loss": hf["final_loss"],
                "slmforge_final_loss": ours["final_loss"],
                "slmforge_mfu": ours["mfu"],
                "procs": args.procs,
                "trainer_mfu": ours["mfu"] * hf["tokens_per_s"] / ours["tokens_per_s"],
                "compile_s": ours["first_steps_s"],
                "compile": args.compile,
            }
        )
        _print(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _inputs(data: str | None, tokenizer: str | None) -> tuple[str, str]:
    from slmforge.core import workspace

    cache = workspace.home() / "bench"
    if data is None:
        data = str(cache / "pydocs")
        if not Path(data, "train.jsonl").exists():
            from slmforge.data.ingest import IngestConfig, ingest

            ingest(IngestConfig(paths=[PYDOCS], out=data, overwrite=True))
    if tokenizer is None:
        tokenizer = str(cache / "pydocs-tok8k")
        if not Path(tokenizer, "tokenizer.json").exists():
            from slmforge.data.tokenizer import TokenizerConfig, train_tokenizer

            train_tokenizer(TokenizerConfig(data=data, out=tokenizer, vocab_size=8192, overwrite=True))
    return data, tokenizer


def run_pretrain(data: str, tok: str, depth: int, flags: list[str]) -> tuple[list[dict], int]:
    """Run `slm pretrain --depth D FLAGS` in a fresh temp run dir; return its metrics.jsonl rows and params."""
    import os
    import subprocess

    out = Path(tempfile.mkdtemp(prefix=f"bench-d{depth}-")) / "run"
    cmd = [sys.executable, "-m", "slmforge.cli", "pretrain", "--data", data, "--tokenizer", tok,
           "--out", str(out), "--depth", str(depth), *flags]  # fmt: skip
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "slmforge.json").read_text())["metrics"]["params"]


def _run_slmforge(data: str, tok: str, depth: int, args) -> dict:
    """`slm pretrain` exactly as a user runs it: --procs processes (one thread each), same global batch."""
    rows, params = run_pretrain(data, tok, depth, [
        "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size // args.procs),
        "--max-steps", str(args.steps), "--eval-every", str(10**9), "--checkpoint-every", str(10**9),
        "--precision", "fp32", "--log-every", "5", "--procs", str(args.procs),
        "--compile" if args.compile else "--no-compile",
    ])  # fmt: skip
    steps = [r for r in rows if "loss" in r]
    steady = steps[args.skip :]
    tokens = args.batch_size * args.seq_len
    return {
        "params": params,
        "tokens_per_s": tokens * len(steady) / sum(r["dt_ms"] / 1000 for r in steady),
        "final_loss": statistics.mean(r["loss"] for r in steps[-5:]),
        "mfu": statistics.mean(r["mfu"] for r in steady),
        "first_steps_s": sum(r["dt_ms"] for r in steps[: args.skip]) / 1000,
    }


def _run_trainer(data: str, tok_dir: str, depth: int, args) -> dict:
    """HF Trainer on the identical model, data order and optimizer: its best setting here is fp32."""
    import numpy as np
    from transformers import AutoTokenizer, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from slmforge.data.tokens import batch_windows, open_windows, prepare_tokens
    from slmforge.lm.ladder import build_config, ladder

    tok = AutoTokenizer.from_pretrained(tok_dir)
    windows = open_windows(prepare_tokens(data, tok, progress=False), "train", args.seq_len)
    order = np.concatenate([batch_windows(s, args.batch_size, len(windows), 0) for s in range(args.steps)])
    spec = ladder(depth, len(tok), args.seq_len)
    torch.manual_seed(0)  # the same init as slmforge's loop (seed 0, model built right after seeding)
    model = LlamaForCausalLM(
        build_config(spec, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    )

    class Ordered(torch.utils.data.Dataset):
        def __len__(self):
            return len(order)

        def __getitem__(self, i):
            w = torch.from_numpy(windows.window(int(order[i])))
            return {"input_ids": w, "labels": w}  # HF shifts labels: the same 256 predictions as ours

    warmup = min(200, max(1, args.steps // 20))

    class InOrder(Trainer):
        def _get_train_sampler(self, *a, **kw):
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def create_scheduler(self, num_training_steps, optimizer=None):
            # slmforge's exact warmup + cosine (HF's own warmup spends step 0 at lr 0, shifting the curve)
            from slmforge.train.loop import lr_at

            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer,
                lambda s: lr_at(s, args.steps, warmup, spec.lr, 0.1, 0.0, None) / spec.lr,
            )
            return self.lr_scheduler

    times, losses = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **kw):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-hf-"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=spec.lr,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )
    InOrder(model=model, args=targs, train_dataset=Ordered(), callbacks=[Clock()]).train()
    steady = times[args.skip :]
    return {
        "tokens_per_s": args.batch_size * args.seq_len * len(steady) / sum(steady),
        "final_loss": statistics.mean(losses[-5:]),
    }


def _print(rows: list[dict]) -> None:
    print(
        "\n| depth | params | HF Trainer tok/s | slmforge tok/s | ratio | Trainer loss | slmforge loss | MFU (slmforge) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['depth']} | {r['params_m']:.1f}M | {r['trainer_tokens_per_s']:,.0f} | "
            f"{r['slmforge_tokens_per_s']:,.0f} | **{r['speedup']:.2f}×** | {r['trainer_final_loss']:.3f} | "
            f"{r['slmforge_final_loss']:.3f} | {r['slmforge_mfu'] * 100:.1f}% |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
