"""Three rungs of the size ladder trained for equal wall time on the same data: val bits-per-byte against time.

    python benchmarks/ladder.py --depths 4 6 8 --minutes 4 --png benchmarks/results/ladder_bpb.png

Each rung is `slm pretrain --depth D --max-minutes M --procs P` (the lr schedule follows time), evaluated on
the same val windows every --eval-every steps. Data: the Python docs, ingested and tokenised as in
train_throughput.py. Prints a table of the final val bpb per rung and writes the plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import _inputs, run_pretrain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--tokenizer")
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--png", default="ladder_bpb.png")
    args = ap.parse_args()
    data, tok = _inputs(args.data, args.tokenizer)
    curves = {}
    for depth in args.depths:
        rows, params = run_pretrain(data, tok, depth, [
            "--max-minutes", str(args.minutes), "--eval-every", str(args.eval_every),
            "--checkpoint-every", "1000000", "--log-every", "10", "--procs", str(args.procs),
            "--batch-size", str(16 // args.procs),
        ])  # fmt: skip
        steps = max(r["step"] for r in rows)
        curves[depth] = {
            "params": params,
            "steps": steps,
            "points": [(r["elapsed_s"] / 60, r["val_bpb"]) for r in rows if "val_bpb" in r],
        }
    print(f"\n| depth | params | steps in {args.minutes:g} min | final val bpb |")
    print("|---|---|---|---|")
    for depth, c in curves.items():
        print(f"| {depth} | {c['params'] / 1e6:.1f}M | {c['steps']} | {c['points'][-1][1]:.4f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for depth, c in curves.items():
        ax.plot(*zip(*c["points"]), "o-", ms=3, label=f"depth {depth} ({c['params'] / 1e6:.1f}M)")
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("val bits per byte")
    ax.set_title(f"Size ladder on the Python docs, {args.minutes:g} min each")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=100)
    print("plot:", args.png)


if __name__ == "__main__":
    main()
