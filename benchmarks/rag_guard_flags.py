"""What the RAG chunk guard flags in the Python docs: rules and (optionally) a detector over the same chunks.

python benchmarks/rag_guard_flags.py [DETECTOR_DIR] [--root /usr/share/doc/python3.11/html/_sources]
"""

from __future__ import annotations

import argparse
import collections
import time

from slmforge.data.readers import iter_documents
from slmforge.rag.chunking import ChunkConfig, chunk_document
from slmforge.rag.guarding import ChunkGuard, guarded_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("detector", nargs="?", help="a detector directory to compare with the rules")
    ap.add_argument("--root", default="/usr/share/doc/python3.11/html/_sources")
    args = ap.parse_args()
    cfg = ChunkConfig(max_chars=800, overlap=100)
    chunks = [
        guarded_text(c.section, d.source, c.text)
        for d in iter_documents([args.root])
        for c in chunk_document(d.text, d.fmt, cfg)
    ]
    for setting in ["rules", *([args.detector] if args.detector else [])]:
        guard = ChunkGuard(setting)
        started = time.perf_counter()
        flags = guard.check_many(chunks)
        seconds = time.perf_counter() - started
        reasons = collections.Counter(r for f in flags if f for r in f.split(","))
        print(f"{guard.name}: {sum(map(bool, flags))} of {len(chunks)} chunks flagged; {seconds:.1f} s "
              f"({1000 * seconds / len(chunks):.3f} ms/chunk); {dict(reasons)}")  # fmt: skip


if __name__ == "__main__":
    main()
