"""Check pydocs_answers.jsonl: schema, relevance targets, and that no question copies the docs' wording.

    python benchmarks/data/check_answer_set.py [FILE] [--docs DIR]

Paraphrase rule: no question shares a 5-gram (5 consecutive word tokens, `[a-z0-9_]+` of the lowercased
text) with any `.txt` file under the Python 3.11 reST sources (the whole `_sources` tree, not only
`library/`). Schema: ids unique, every field present and typed, `split` is "test", answerable rows have
1-3 terms and at least one relevant target, unanswerable rows answer "I don't know" with no terms and no
targets; every `doc` exists and every `section` equals the section path of some chunk of that doc (as
`slmforge.rag.chunking` cuts it, the format chosen as `slm rag index` chooses it) or is a prefix of one.
Prints one line per problem and a summary; exits 1 if there is any problem.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import cache
from pathlib import Path

from slmforge.data.readers import file_format
from slmforge.rag.chunking import chunk_document

DOCS = Path("/usr/share/doc/python3.11/html/_sources")
FILE = Path(__file__).with_name("pydocs_answers.jsonl")
N = 5
FIELDS = {"id": str, "query": str, "answer": str, "terms": list, "relevant": list, "answerable": bool,
          "split": str}  # fmt: skip


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+", text.lower())


def ngrams(text: str, n: int = N) -> set[tuple[str, ...]]:
    t = tokens(text)
    return {tuple(t[i : i + n]) for i in range(len(t) - n + 1)}


def found_in_docs(wanted: set[tuple[str, ...]], docs: Path) -> set[tuple[str, ...]]:
    """The 5-grams of `wanted` that occur in some .txt file under `docs` (the docs' own set is never held)."""
    found: set[tuple[str, ...]] = set()
    for path in sorted(docs.rglob("*.txt")):
        t = tokens(path.read_text(encoding="utf-8-sig", errors="replace"))
        found |= {g for i in range(len(t) - N + 1) if (g := tuple(t[i : i + N])) in wanted}
    return found


@cache
def sections(path: Path) -> frozenset[str]:
    """The section paths of a doc's chunks, cut the way `slm rag index` cuts it."""
    text = path.read_text(encoding="utf-8-sig")
    return frozenset(c.section for c in chunk_document(text, file_format(path) or "txt"))


def section_ok(section: str, found: frozenset[str]) -> bool:
    return section in found or any(s.startswith(section + " > ") for s in found)


def load(path: Path) -> tuple[list[dict], list[str]]:
    rows, problems = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            problems.append(f"line {n}: not JSON")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {n}: not an object")
            continue
        rows.append(row)
    return rows, problems


def check_schema(rows: list[dict], docs: Path) -> list[str]:
    problems, seen = [], set()
    for n, row in enumerate(rows, 1):
        rid = row.get("id", f"row {n}")
        for key, typ in FIELDS.items():
            if not isinstance(row.get(key), typ):
                problems.append(f"{rid}: field {key!r} missing or not {typ.__name__}")
        if set(row) - set(FIELDS):
            problems.append(f"{rid}: unknown fields {sorted(set(row) - set(FIELDS))}")
        if any(not isinstance(row.get(k), t) for k, t in FIELDS.items()):
            continue
        if rid in seen:
            problems.append(f"{rid}: duplicate id")
        seen.add(rid)
        if row["split"] != "test":
            problems.append(f"{rid}: split must be 'test'")
        if not row["query"].strip() or not row["answer"].strip():
            problems.append(f"{rid}: empty query or answer")
        if row["answerable"]:
            if not rid.startswith("ans-"):
                problems.append(f"{rid}: answerable ids start with 'ans-'")
            if not 1 <= len(row["terms"]) <= 3 or not all(
                isinstance(t, str) and t.strip() for t in row["terms"]
            ):
                problems.append(f"{rid}: needs 1-3 non-empty string terms")
            elif not any(t.lower() in row["answer"].lower() for t in row["terms"]):
                problems.append(f"{rid}: the reference answer contains none of its terms")
            if not row["relevant"]:
                problems.append(f"{rid}: needs at least one relevant target")
            for target in row["relevant"]:
                problems += check_target(rid, target, docs)
        else:
            if not rid.startswith("una-"):
                problems.append(f"{rid}: unanswerable ids start with 'una-'")
            if row["answer"] != "I don't know" or row["terms"] or row["relevant"]:
                problems.append(f'{rid}: unanswerable rows answer "I don\'t know" with no terms or targets')
    return problems


def check_target(rid: str, target: object, docs: Path) -> list[str]:
    if not isinstance(target, dict) or not isinstance(target.get("doc"), str):
        return [f"{rid}: a relevant target needs a string 'doc'"]
    path = docs / target["doc"]
    if not path.is_file():
        return [f"{rid}: no doc {target['doc']}"]
    section = target.get("section")
    if section is None:
        return []
    if not isinstance(section, str) or not section_ok(section, sections(path)):
        return [f"{rid}: {target['doc']} has no section {section!r}"]
    return []


def check_paraphrase(rows: list[dict], docs: Path) -> list[str]:
    """One problem per question that shares a 5-gram with the docs."""
    per_row = [ngrams(str(row.get("query", ""))) for row in rows]
    grams = found_in_docs(set().union(*per_row), docs)
    problems = []
    for row, mine in zip(rows, per_row):
        shared = sorted(" ".join(g) for g in mine & grams)
        if shared:
            problems.append(f"{row.get('id')}: shares {len(shared)} 5-gram(s) with the docs: {shared[:3]}")
    return problems


def check(path: Path = FILE, docs: Path = DOCS) -> tuple[list[dict], list[str]]:
    """(rows, problems) for the set at `path` against the docs under `docs`."""
    rows, problems = load(path)
    problems += check_schema(rows, docs)
    problems += check_paraphrase(rows, docs)
    return rows, problems


def modules(rows: list[dict]) -> set[str]:
    """The library modules (doc files) the answerable rows point at."""
    return {
        t["doc"] for r in rows if r.get("answerable") for t in r.get("relevant", []) if isinstance(t, dict)
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", default=str(FILE))
    ap.add_argument("--docs", default=str(DOCS))
    args = ap.parse_args(argv)
    docs = Path(args.docs)
    if not docs.is_dir():
        print(f"no docs folder {docs}", file=sys.stderr)
        return 2
    rows, problems = check(Path(args.file), docs)
    for p in problems:
        print(p)
    ans = sum(1 for r in rows if r.get("answerable") is True)
    print(f"{len(rows)} rows: {ans} answerable, {len(rows) - ans} unanswerable, "
          f"{len(modules(rows))} docs; {len(problems)} problem(s)")  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
