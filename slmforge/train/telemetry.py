"""Training telemetry: one line per step, a progress bar, metrics.jsonl and loss.png."""

from __future__ import annotations

import json
from pathlib import Path

from slmforge.core.fsutil import atomic_file


class StepLogger:
    """One line per step (loss, lr, dt, tok/s, MFU, elapsed, ETA), a progress bar, metrics.jsonl and loss.png."""

    def __init__(
        self,
        out: Path,
        enabled: bool,
        total_steps: int,
        progress: bool,
        every: int = 1,
        name: str = "pretrain",
    ):
        self.out, self.enabled, self.total, self.every = out, enabled, total_steps, every
        self.last_val_step = self.last_ckpt_step = -1
        self.last_elapsed = 0.0
        self.dt_ema = None
        self._bar_cm = self._bar = None
        self._file = open(out / "metrics.jsonl", "a") if enabled else None
        if enabled:
            from slmforge.core.progress import bar, stderr

            self.console = stderr
            if progress:
                self._bar_cm = bar(name, total=total_steps, enabled=True)
                self._bar = self._bar_cm.__enter__()

    def header(self, params, total_steps, tokens_per_step, amp, threads, world, start_step) -> None:
        if not self.enabled:
            return
        self.console.print(
            f"model {params / 1e6:.2f}M params | {total_steps} steps × {tokens_per_step:,} tokens | "
            f"precision {'bf16 autocast' if amp else 'fp32'} | threads {threads} × {world} process(es)"
            + (f" | resuming at step {start_step}" if start_step else "")
        )
        if self._bar is not None:
            self._bar.update(completed=start_step)

    def step(self, step, loss, lr, grad_norm, dt, tokens, flops_tok, peak, elapsed, max_minutes) -> None:
        if not self.enabled:
            return
        self.last_elapsed = elapsed
        self.dt_ema = dt if self.dt_ema is None else 0.9 * self.dt_ema + 0.1 * dt
        eta = (self.total - step) * self.dt_ema
        if max_minutes:
            eta = min(eta, max(0.0, max_minutes * 60 - elapsed))
        tok_s = tokens / dt
        mfu = tok_s * flops_tok / peak
        rec = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "dt_ms": dt * 1000,
            "tokens_per_s": tok_s,
            "mfu": mfu,
            "elapsed_s": elapsed,
        }
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if step % self.every == 0 or step == self.total:
            line = (
                f"step {step:>6}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | dt {dt * 1000:.0f}ms | "
                f"tok/s {tok_s:,.0f} | mfu {mfu * 100:.1f}% | elapsed {_hms(elapsed)} | eta {_hms(eta)}"
            )
            self.console.print(line, highlight=False)
        if self._bar is not None:
            # under --max-minutes the run ends at the time limit: size the bar by the steps that fit in it
            total = min(self.total, step + round(eta / self.dt_ema)) if max_minutes else self.total
            self._bar.update(completed=step, total=total, rate=f"{tok_s:,.0f} tok/s")

    def val(self, step, m) -> None:
        self.last_val_step = step
        if not self.enabled:
            return
        rec = {"step": step, "val_loss": m["loss"], "val_bpb": m["bpb"], "elapsed_s": self.last_elapsed}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        self.console.print(
            f"step {step:>6} | val loss {m['loss']:.4f} | val bpb {m['bpb']:.4f} | "
            f"val ppl {m['perplexity']:.2f}",
            highlight=False,
        )
        self.plot()

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def plot(self) -> None:
        if not self.enabled:
            return
        plot_losses(self.out / "metrics.jsonl", self.out / "loss.png")

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._bar_cm is not None:
            self._bar_cm.__exit__(None, None, None)


def plot_losses(metrics_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(png, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
