"""The right-sizing Pareto plot shared by `slmforge.ship.rightsize.classification` and `slmforge.ship.rightsize.generation`: quality
against two cost axes, green where a rung meets the target, a red circle round the pick."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def plot_pareto(
    table: list[dict],
    pick: dict | None,
    png: Path,
    *,
    quality: tuple[str, str],
    x_axes: tuple[tuple[str, str], tuple[str, str]],
    title: str,
    style: Callable[[dict], dict] | None = None,
    always_log: bool = False,
    ylim: tuple[float, float] | None = None,
) -> None:
    """Write `png`: `quality` (key, label; a fraction, drawn in %) against each of `x_axes` (key, label).

    Rows with an "error" or a missing value are left out. `style(row)` gives extra `scatter` arguments
    (marker, s, alpha) per row. The x axis is log-scaled when `always_log` or when it spans more than 10x.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slmforge.core.fsutil import atomic_file

    qkey, qlabel = quality
    rows = [t for t in table if "error" not in t]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (key, label) in zip(axes, x_axes):
        shown = [t for t in rows if t.get(key) is not None and t.get(qkey) is not None]
        seen: dict[tuple, int] = {}
        for t in shown:
            x, y = t[key], t[qkey] * 100
            kwargs = {"s": 60, "alpha": 0.75} | (style(t) if style else {})
            ax.scatter(x, y, color="tab:green" if t["meets"] else "tab:gray", **kwargs)
            spot = (f"{x:.3g}", round(y))  # rungs sharing a point: stack their labels
            seen[spot] = seen.get(spot, -1) + 1
            ax.annotate(
                t["rung"], (x, y), fontsize=8, xytext=(4, 4 + 10 * seen[spot]), textcoords="offset points"
            )
        if pick and pick.get(key) is not None:
            ax.scatter(
                pick[key], pick[qkey] * 100, s=250, facecolors="none", edgecolors="tab:red", linewidths=2
            )
        xs = [t[key] for t in shown]
        if always_log or (xs and min(xs) > 0 and max(xs) / min(xs) > 10):
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(qlabel)
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
