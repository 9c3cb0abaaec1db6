"""Counts that describe the package's layout: the figures issue 25 asks for, before and after.

    python3 scripts/layout_stats.py            # a table
    python3 scripts/layout_stats.py --json     # the same, machine-readable

Import edges are every `import slmforge...` / `from . import ...` in a module, at the top or inside a function
(a lazy import is still a dependency). Layers are the longest chain of module-level-or-lazy imports in the
graph with its loops collapsed; a loop is a strongly connected set of two or more modules.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "slmforge"


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def graph(mods: dict[str, Path]):
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private: list[str] = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append((sub, None) if sub in mods else (base, a.name))
            for target, name in targets:
                t = target
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if not t or t == mod or not t.startswith("slmforge"):
                    continue
                edges[mod].add(t)
                if name and name.startswith("_") and not name.startswith("__"):
                    private.append(f"{mod} imports {t}.{name}")
    return edges, private


def sccs(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def layers(edges, comps) -> int:
    # packages' __init__ re-exports are not layers of their own
    of = {m: i for i, c in enumerate(comps) for m in c}
    dag = {i: set() for i in range(len(comps))}
    for a, bs in edges.items():
        for b in bs:
            if of[a] != of[b]:
                dag[of[a]].add(of[b])
    depth: dict[int, int] = {}

    def d(i):
        if i not in depth:
            depth[i] = 1 + max((d(j) for j in dag[i]), default=0)
        return depth[i]

    return max(d(i) for i in dag)


def long_functions(mods, limit=100):
    out = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append((n, f"{mod}.{node.name}"))
    return sorted(out, reverse=True)


def help_time(runs=5) -> float:
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["slm", "--help"], capture_output=True, check=True)
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args()
    mods = modules()
    edges, private = graph(mods)
    comps = sccs(edges)
    loops = [sorted(c) for c in comps if len(c) > 1]
    top = [m for m, p in mods.items() if m.count(".") == 1 and p.name != "__init__.py"]
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in mods.items()), reverse=True)
    cli_lines = sum(len(p.read_text().splitlines()) for m, p in mods.items() if m.startswith("slmforge.cli"))
    torch_free = (
        subprocess.run(
            [sys.executable, "-c", "import slmforge.cli, sys; sys.exit('torch' in sys.modules)"], cwd=ROOT
        ).returncode
        == 0
    )
    stats = {
        "top_level_modules": len(top),
        "modules": len(mods),
        "import_layers": layers(edges, comps),
        "import_loops": loops,
        "private_imports": private,
        "cli_lines": cli_lines,
        "largest_modules": sizes[:5],
        "functions_over_100_lines": long_functions(mods),
        "cli_imports_torch": not torch_free,
    }
    if not args.no_timing:
        stats["slm_help_s_median5"] = round(help_time(), 3)
    if args.json:
        print(json.dumps(stats, indent=1))
        return
    for k, v in stats.items():
        if isinstance(v, list):
            print(f"{k}: {len(v)}")
            for x in v:
                print(f"    {x}")
        else:
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
