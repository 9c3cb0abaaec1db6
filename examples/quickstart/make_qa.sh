#!/usr/bin/env bash
# Remake pydocs_qa.jsonl, the rows `slm quickstart` RAG-tunes SmolLM2-135M-Instruct on (README.md beside this
# file): index the quickstart's 3 Python doc pages, then `slm synth --task qa` over 120 of their chunks with
# the default teacher (Qwen2.5-Coder-0.5B-Instruct on ONNX Runtime int8). About 20-40 minutes on 2 cores.
set -euo pipefail
P=${PYDOCS:-/usr/share/doc/python3.11/html/_sources}/library
OUT=${OUT:-$(dirname "$0")/pydocs_qa.jsonl}
slm rag index "$P/json.rst.txt" "$P/csv.rst.txt" "$P/pathlib.rst.txt" --index quickstart-docs
slm synth quickstart-docs --task qa --n 120 --seed 0 -o "$OUT"
