"""Index-time cost of the RAG chunk guard: the same Python-docs pages indexed with guard none and rules, in turn.

python benchmarks/rag_guard_overhead.py json,pathlib,asyncio-dev [--reps 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from slmforge.rag.index import RagIndexConfig, build_index

SOURCES = Path("/usr/share/doc/python3.11/html/_sources/library")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pages", help="comma-separated library page names")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--guards", default="none,rules")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rag-guard-"))
    try:
        docs = work / "docs"
        docs.mkdir()
        for name in args.pages.split(","):
            shutil.copy(SOURCES / f"{name}.rst.txt", docs / f"{name}.rst.txt")

        def run(guard: str, index: str):
            cfg = RagIndexConfig(paths=[str(docs)], index=str(work / index), threads=2, guard=guard)
            return build_index(cfg, progress=False)

        run("none", "warm.sqlite")  # exports the embedder once
        for rep in range(args.reps):
            for i, guard in enumerate(args.guards.split(",")):
                r = run(guard, f"{rep}-{i}.sqlite")
                share = 100 * r.guard_seconds / max(r.seconds - r.guard_seconds, 1e-9)
                print(f"rep {rep} guard {guard}: {r.chunks_total} chunks, {r.seconds:.1f} s, guard "
                      f"{r.guard_seconds:.2f} s ({share:.1f} % of the rest), flagged {r.flagged_total}")  # fmt: skip
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
