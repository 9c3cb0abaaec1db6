"""What the `slm` verbs print: the two consoles (results on stdout, messages on stderr) and the tables."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # no 80-column wrapping in logs and pipes


def table(title: str, rows: dict) -> None:
    """A two-column table of what a verb produced: one row per key."""
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in rows.items():
        t.add_row(str(k), str(v))
    out.print(t)


def derived_rows(m: dict) -> dict:
    """The rows of `slm export` / `slm quantize`: the model written and its agreement with the source."""
    rows = {"out": m["out"], "format": f"{m['format']} {m['precision']}", "kind": m["model_kind"]}
    if m.get("disk_mb") is not None:
        rows["disk"] = f"{m['source_disk_mb']} MB → {m['disk_mb']} MB"
    rows["verified against"] = m["verify_vs"]
    rows["max |diff|"] = f"{m['verify_max_abs_diff']:.2e}"
    rows["cosine mean / min"] = f"{m['verify_cosine_mean']:.4f} / {m['verify_cosine_min']:.4f}"
    if "verify_top1_agreement" in m:
        rows["top-1 agreement"] = f"{m['verify_top1_agreement']:.3f} ({m['verify_texts']} texts)"
    if "perplexity" in m:
        rows["perplexity"] = (
            f"{m['perplexity_fp32']} → {m['perplexity']} ({m['perplexity_rise_pct']:+.2f} %, "
            f"{m['perplexity_tokens']} held-out tokens)"
        )
    if m.get("size_ratio"):
        rows["size vs fp32 weights"] = f"{100 * m['size_ratio']:.1f} %"
    return rows


def ladder_mark(picked: bool, meets: bool) -> str:
    """The last cell of a right-sizing ladder's row."""
    return "[bold green]pick[/bold green]" if picked else ("yes" if meets else "no")


def warnings_to_console() -> None:
    """Print Python warnings (e.g. a truncated query) as one yellow line each, not a source dump."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    warnings.showwarning = show
