"""A small generated corpus (30 two-section manuals of made-up devices) and questions about it, in the
row shapes `slm synth --task qa` and `slm rag eval` write: enough answerable questions to calibrate on."""

from __future__ import annotations

import json
import random
from pathlib import Path

_SYLLABLES = [
    "ka",
    "vor",
    "mi",
    "len",
    "tas",
    "qu",
    "rob",
    "ze",
    "nil",
    "dor",
    "fa",
    "wex",
    "sul",
    "pri",
    "gon",
]
_DEVICES = [
    "router",
    "printer",
    "kettle",
    "drone",
    "thermostat",
    "scanner",
    "speaker",
    "lamp",
    "camera",
    "fan",
]
_INSTALL = [
    ("mount it on a wall bracket and tighten the two screws", "bracket"),
    ("plug it into a grounded socket and hold the power key for five seconds", "grounded"),
    ("pair it with the phone app over bluetooth", "bluetooth"),
    ("insert the battery pack and close the lid until it clicks", "battery"),
    ("connect the ethernet cable to the yellow port", "ethernet"),
    ("place it on a flat surface away from direct sunlight", "sunlight"),
]
_FIX = [
    ("the filter is clogged and must be rinsed under cold water", "filter"),
    ("the firmware is outdated; update it from the settings menu", "firmware"),
    ("the fuse has blown and needs a replacement", "fuse"),
    ("the sensor lens is dirty; wipe it with a dry cloth", "lens"),
    ("the antenna is loose; screw it back in firmly", "antenna"),
    ("the motor overheated; let it cool for an hour", "motor"),
]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()


def write_corpus(root: Path, n: int = 30, seed: int = 0) -> tuple[Path, list[dict]]:
    """Write n manuals under root/docs; return the folder and one fact record per manual."""
    rng = random.Random(seed)
    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    facts, names = [], set()
    while len(facts) < n:
        name = _name(rng)
        if name in names:
            continue
        names.add(name)
        device = rng.choice(_DEVICES)
        install, install_term = rng.choice(_INSTALL)
        fix, fix_term = rng.choice(_FIX)
        code = f"{rng.choice('ABCDEFGH')}{rng.randint(100, 999)}"
        title = f"The {name} {device}"
        text = (
            f"# {title}\n\n## Installing\n\nTo install the {name} {device}, {install}.\n"
            f"Keep the {name} receipt for the warranty.\n\n"
            f"## Troubleshooting\n\nIf the {name} {device} shows error {code}, {fix}.\n"
        )
        path = docs / f"{name.lower()}.md"
        path.write_text(text, encoding="utf-8")
        facts.append({"name": name, "device": device, "title": title, "code": code, "path": str(path.resolve()),
                      "install": install, "install_term": install_term, "fix": fix, "fix_term": fix_term})  # fmt: skip
    return docs, facts


def synth_rows(facts: list[dict], unanswerable: int = 6) -> list[dict]:
    """qa.jsonl rows (QA_SCHEMA.md): two answerable questions per manual, and some unanswerable ones."""
    rows = []
    for i, f in enumerate(facts):
        for section, question, answer, term in (
            ("Installing", f"How do I set up my {f['name']} {f['device']}?", f"You {f['install']}.", f["install_term"]),
            ("Troubleshooting", f"What does code {f['code']} on the {f['name']} mean?", f"It means {f['fix']}.",
             f["fix_term"]),
        ):  # fmt: skip
            source = {"index": "kb", "doc": f["path"], "section": f"{f['title']} > {section}", "chunk_id": 0}
            rows.append({"id": f"qa-{len(rows):05d}", "task": "qa", "question": question, "answer": answer,
                         "terms": [term], "answerable": True, "source": source, "teacher": "test", "seed": 0})  # fmt: skip
        if i < unanswerable:
            source = {"index": "kb", "doc": f["path"], "section": f"{f['title']} > Installing", "chunk_id": 0}
            rows.append({"id": f"qa-{len(rows):05d}", "task": "qa", "answerable": False, "answer": "I don't know",
                         "question": f"Who designed the {f['name']} {f['device']} and when?", "source": source,
                         "teacher": "test", "seed": 0})  # fmt: skip
    return rows


def eval_rows(facts: list[dict]) -> list[dict]:
    """The same answerable questions in slm rag eval's queries format (doc as the end of the path)."""
    rows = []
    for f in facts:
        doc = Path(f["path"]).name
        rows.append({"query": f"How do I set up my {f['name']} {f['device']}?", "answer": f"You {f['install']}.",
                     "relevant": [{"doc": doc, "section": f"{f['title']} > Installing"}]})  # fmt: skip
        rows.append({"query": f"What does code {f['code']} on the {f['name']} mean?", "answer": f"It means {f['fix']}.",
                     "relevant": [{"doc": doc, "section": f"{f['title']} > Troubleshooting"}]})  # fmt: skip
    rows.append({"query": "Who won the 1998 football world cup?", "answerable": False})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
