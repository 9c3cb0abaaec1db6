"""The package's plan holds: no import loops, no upward imports, no cross-module private names, no torch in core/
or the CLI at import, and modules of a readable size (scripts/layout_stats.py computes the figures)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("layout_stats", ROOT / "scripts" / "layout_stats.py")
stats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stats)

# The order of the house: a package may import only packages at its level or below.
LEVELS = [
    "core",
    "data",
    "train",
    "infer",
    "lm",
    "clf",
    "ship",
    "guard",
    "rag",
    "synth",
    "route",
    "serve",
    "quickstart",
    "cli",
]
SAME_LEVEL = {("lm", "clf"): False, ("clf", "lm"): False}  # the two families never import each other
MAX_LINES = 600


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_no_import_loops():
    edges, _ = stats.graph(stats.modules())
    loops = [sorted(c) for c in stats.sccs(edges) if len(c) > 1]
    assert loops == []


def test_imports_only_go_down():
    edges, _ = stats.graph(stats.modules())
    upward = []
    for a, bs in edges.items():
        for b in bs:
            pa, pb = _package(a), _package(b)
            if not pa or not pb or pa == pb:
                continue
            if LEVELS.index(pb) > LEVELS.index(pa) or SAME_LEVEL.get((pa, pb)) is False:
                upward.append(f"{a} -> {b}")
    assert upward == []


def test_no_module_imports_another_modules_private_name():
    _, private = stats.graph(stats.modules())
    assert private == []


def test_every_module_is_at_most_600_lines():
    big = [(m, n) for m, p in stats.modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert big == []


def test_core_and_the_cli_load_no_torch():
    code = "import slmforge.core.runtime, slmforge.core.workspace, slmforge.cli, sys; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
