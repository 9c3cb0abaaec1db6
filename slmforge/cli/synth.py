"""`slm synth`: task data (qa, summaries, intents) from your documents, written by a teacher model."""

from __future__ import annotations

from slmforge.cli.options import Opts, options
from slmforge.cli.render import out


@options(Opts("slmforge.synth.configs:SynthConfig", args=("source",), short={"out": "-o"}))
def synth_cmd(cfg) -> None:
    """Make task data from documents: questions + answers, summaries or intent paraphrases, each row with its
    source; filtered, counted in OUT.report.json, resumable (re-run the same command)."""
    from rich.table import Table

    from slmforge.synth.run import paths, synth

    r = synth(cfg)
    t = Table(title=f"slm synth {r['task']}: {r['rows']:,} rows", show_header=False)
    t.add_row("out", r["out"])
    t.add_row("report", str(paths(cfg.out)[1]))
    t.add_row("teacher", r["teacher"] + (f" at {r['teacher_url']}" if r["teacher_url"] else ""))
    skipped = ", ".join(f"{v:,} {k}" for k, v in r["skipped"].items() if v)
    what = "seed examples" if r["task"] == "intents" else "chunks"
    t.add_row(what, f"{r['units']:,} used of {r['available']:,} eligible ({r['in_source']:,} in the source"
              + (f"; skipped: {skipped}" if skipped else "") + ")")  # fmt: skip
    for k, v in r["counts"].items():
        t.add_row(k.replace("_", " "), f"{v:,}")
    if "retrieval_check" in r:
        t.add_row("retrieval check", r["retrieval_check"])
    seconds = r["seconds"]
    t.add_row("seconds", ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in seconds.items()))
    if r.get("units_per_minute"):
        t.add_row("teacher rate", f"{r['units_per_minute']:.1f} {what}/min")
    out.print(t)
