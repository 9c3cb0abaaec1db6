"""Write pydocs_questions.jsonl: retrieval questions over Python 3.11's reST docs (see README.md here).

Answerable questions come from API entries (`.. function::`, `.. method::`, `.. class::` …) of
`library/*.rst.txt`: the first sentence of an entry's description becomes a question, and the relevant
target is that document and the entry's section path. Unanswerable questions are written by hand below.
Deterministic: `python benchmarks/data/make_pydocs_questions.py` rewrites the same file.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from slmforge.rag.chunking import _lines, _sections

DOCS = Path("/usr/share/doc/python3.11/html/_sources")
OUT = Path(__file__).with_name("pydocs_questions.jsonl")
N_ANSWERABLE = 240
PER_DOC = 3
SEED = 0

_ENTRY = re.compile(r"^\.\. (function|method|class|exception|decorator|classmethod|staticmethod)::\s*(.+)$")
_ROLE = re.compile(r":[\w:+.-]+:`~?!?([^`<]*?)\s*(?:<[^>]*>)?`")


def clean(text: str) -> str:
    text = _ROLE.sub(r"\1", text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r"\*\*?([^*]+)\*\*?", r"\1", text)
    text = re.sub(r"`([^`]*)`_?", r"\1", text)
    return " ".join(text.split())


def first_sentence(body: list[str]) -> str | None:
    """The entry's first description paragraph, up to its first full stop."""
    para = []
    for line in body:
        s = line.strip()
        if not s:
            if para:
                break
            continue
        if s.startswith((".. ", ":")) and not para:
            return None  # a directive or field list first: no plain description
        para.append(s)
    text = clean(" ".join(para))
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return m.group(1) if m else None


def question(kind: str, sentence: str) -> str | None:
    words = sentence.rstrip(".").split()
    if not 6 <= len(words) <= 30:
        return None
    first, rest = words[0], " ".join(words[1:])
    thing = {"method": "method", "classmethod": "method", "staticmethod": "method", "class": "class",
             "exception": "exception", "decorator": "decorator"}.get(kind, "function")  # fmt: skip
    if first in ("Return", "Returns"):
        return f"Which {thing} returns {rest}?"
    if first in ("Raised", "Raise"):
        return f"Which {thing} is raised {rest}?" if first == "Raised" else f"What raises {rest}?"
    if first in ("A", "An"):
        return f"Which {thing} is {first.lower()} {rest}?"
    if kind in ("class", "exception") or first in NOT_VERBS or first.endswith(("s", "ly", "ed")):
        return None  # "This ...", "Given ...", "Gets ...": not an instruction to turn into "how do I"
    return f"How do I {first.lower()} {rest}?"


NOT_VERBS = {"This", "These", "Given", "Similar", "If", "When", "For", "Like", "Same", "Note", "See", "New",
             "Deprecated", "Base", "Abstract", "Subclass", "Instances", "Optional", "Class", "Alias", "Identical",
             "Equivalent", "Exception", "Constructor", "Convenience", "Shortcut", "Helper", "Called", "In", "On",
             "As", "Only", "Whether", "True", "False", "Set", "Each", "Unlike", "With", "Without",
             "Default", "Used", "Also", "Version", "Special", "Factory", "Wrapper", "Simple", "Legacy"}  # fmt: skip


def entries(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    lines = _lines(text)
    sections = _sections(text, "rst")
    out = []
    for i, (s, e) in enumerate(lines):
        m = _ENTRY.match(text[s:e])
        if not m:
            continue
        body = [text[a:b] for a, b in lines[i + 1 : i + 40]]
        while (
            body
            and body[0].strip().endswith("\\")
            or (body and body[0].startswith("   ") is False and body[0].strip())
        ):
            body = body[1:]  # continuation lines of a long signature
        sentence = first_sentence(body)
        q = question(m.group(1), sentence) if sentence else None
        if q is None:
            continue
        # the section path the chunker gives the entry's own text
        section = next((sec for sec, units in sections if units and units[0][0] >= s), None)
        if section is None:
            continue
        out.append({"query": q, "relevant": [{"doc": str(path.relative_to(DOCS)), "section": section}],
                    "source_sentence": sentence, "answerable": True})  # fmt: skip
    return out


UNANSWERABLE = [
    "What is the capital city of Mongolia?",
    "Who won the football World Cup in 1998?",
    "How many moons does Jupiter have?",
    "What is the boiling point of ethanol at sea level?",
    "Who wrote the novel Pride and Prejudice?",
    "How do I bake sourdough bread at home?",
    "What is the recommended tire pressure for a mountain bike?",
    "How do I configure a Kubernetes ingress controller?",
    "What does the React useEffect hook do?",
    "How do I create a pivot table in Microsoft Excel?",
    "What is the difference between a Roth IRA and a traditional IRA?",
    "How do I change the oil in a diesel car engine?",
    "Which vitamins are found in spinach?",
    "What is the tallest mountain in Africa?",
    "How do I set up two-factor authentication on a Gmail account?",
    "When did the Roman Empire fall?",
    "What is the plot of the movie Casablanca?",
    "How do I train a puppy to stop biting?",
    "What are the rules of cricket?",
    "How do I write a cover letter for a nursing job?",
    "What is the speed of sound in water?",
    "How does photosynthesis work in plants?",
    "What is the population of Brazil?",
    "How do I play a C major chord on the guitar?",
    "What are the symptoms of the flu?",
    "How do I deploy a Rails application to Heroku?",
    "What does the CSS flexbox justify-content property do?",
    "How do I declare a variable in Rust with let mut?",
    "What is the Java Virtual Machine garbage collector G1?",
    "How do I center a div in HTML?",
    "Who painted the Mona Lisa?",
    "What is the exchange rate between the euro and the yen?",
    "How long should I boil an egg for a soft yolk?",
    "What is the chemical formula of table salt?",
    "How do I knit a scarf for beginners?",
    "Which planet is closest to the sun?",
    "How do I register a company in Delaware?",
    "What causes the northern lights?",
    "How do I repot an orchid?",
    "What is the best time of year to visit Japan?",
]


def main() -> None:
    rng = random.Random(SEED)
    pool = []
    for path in sorted((DOCS / "library").glob("*.rst.txt")):
        found = entries(path)
        rng.shuffle(found)
        pool += found[:PER_DOC]
    counts = Counter(q["query"] for q in pool)
    pool = [q for q in pool if counts[q["query"]] == 1]  # a question two entries share has no single answer
    rng.shuffle(pool)
    chosen = sorted(pool[:N_ANSWERABLE], key=lambda q: (q["relevant"][0]["doc"], q["query"]))
    rows = [{"id": f"a{i:03d}", **q} for i, q in enumerate(chosen)]
    rows += [{"id": f"u{i:03d}", "query": q, "answerable": False} for i, q in enumerate(UNANSWERABLE)]
    with open(OUT, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(chosen)} answerable (from {len(pool)} candidates), {len(UNANSWERABLE)} unanswerable")


if __name__ == "__main__":
    main()
