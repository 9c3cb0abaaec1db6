"""Score the bank pipeline on questions it was not trained on (questions.csv: 3 per intent, written apart
from intents.csv): intent accuracy, and answers cited from the intent's own knowledge-base pages.

    python examples/bank/eval.py WORKSPACE      # a workspace built by examples/bank/build.py
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from slmforge.route.pipeline import load_pipelines

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    pipe = load_pipelines(Path(sys.argv[1]) / "pipelines.yaml", threads=1)["bank"]
    pipe.warm()
    with open(Path(__file__).parent / "questions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    right_label = cited_right = escalated = 0
    times = []
    for r in rows:
        t0 = time.perf_counter()
        out = pipe.run(r["text"])
        times.append((time.perf_counter() - t0) * 1000)
        ok = out["label"] == r["label"]
        right_label += ok
        escalated += out["escalated"]
        cited_right += bool(out["citations"]) and all(
            f"/{r['label']}/" in c["path"] for c in out["citations"]
        )
        mark = "ok " if ok else "ERR"
        print(f"{mark} {r['text'][:60]:<60} {out['label']:<24} {out['confidence']:.2f} {out['route']}")
    n = len(rows)
    times.sort()
    print(f"intent accuracy {right_label}/{n}; cited from the intent's own pages {cited_right}/{n} "
          f"(template intents have no citations); escalated {escalated}/{n}; p50 {times[n // 2]:.0f} ms")  # fmt: skip
