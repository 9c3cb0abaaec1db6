"""The injection guard applied to retrieved text (indirect prompt injection): at index time and at answer time.

A document can carry instructions meant for the model that will read it ("Ignore all previous
instructions and ..."), so `slm rag index` runs the input guard's injection check (`slmforge.guard`:
rules, plus the classifier detector when one is chosen) on every chunk it stores, on the text a prompt
would hold (its title, the section path or file name, and its text), and records what it found (`StoredChunk.flag`). Flagged chunks are
quarantined: retrieval for answers (`slm rag ask`, the server's `/v1/rag/ask`, pipelines) never returns
them, `slm rag search` shows them marked, and `slm rag index` reports how many there are. They are not
deleted: a false positive is one re-index with another `guard` setting away, and an operator can look
at what was caught.

`slm rag ask` checks the retrieved chunks again before they go into the prompt and drops the flagged
ones, so an index built before the guard (or with a weaker one) is protected too.

The `guard` setting of an index: `rules` (default: the guard's rules alone), `auto` (the built detector
at ~/.slmforge/models/guard-injection as well, when there is one), `none` (no check; findings of earlier
runs are cleared), or the path of a detector directory. The default is `rules`, not `auto`, because the
detector is trained on chat messages and reads documentation as injection: issue 6's recipe flagged
22,486 of the 22,491 chunks of the Python docs, and issue 24's still flags 32.5 % of 1,500 sampled chunks
(benchmarks/results/rag_guard.md). The rules flag 6 of 22,491. The setting and a signature of the guard (its
rules and detector) are recorded in the index; when they change, the next `slm rag index` checks every
stored chunk again.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from pathlib import Path

from slmforge.core.errors import SlmError

ROUTE = "rag:chunk"
SETTINGS = ("auto", "rules", "none")
DEFAULT = "rules"  # see the module docstring: the chat-trained detector flags nearly every document chunk
# Technical documents say "debug mode", "developer mode" and "debug build" all the time (35 of the 22,491
# chunks of the Python docs), and the guard's persona rule, written for chat messages, reads them as a
# jailbreak ("enter developer mode"). In a document those words alone are not an attack, so they are
# checked as "debugging mode" / "development mode"; every other part of a text is checked as written.
_DOC_TERMS = re.compile(r"\b(debug|developer)(\s+)(mode|build)\b", re.I)


def _doc_terms(m: re.Match) -> str:
    word = "debugging" if m.group(1).lower() == "debug" else "development"
    return f"{word}{m.group(2)}{m.group(3)}"


def check_setting(setting: str | None) -> str:
    """The index's `guard` setting, validated: auto, rules, none or a detector directory."""
    value = DEFAULT if setting is None else str(setting).strip()
    if value.lower() in SETTINGS:
        return value.lower()
    if not (Path(value).expanduser() / "classifier.json").exists():
        raise SlmError(
            f"guard: {value} is not one of {', '.join(SETTINGS)} nor a detector directory "
            "(one holding classifier.json; build it with `python -m slmforge.guard`)"
        )
    return value


class ChunkGuard:
    """The input guard set up for retrieved text: injection only (personal data in documents is theirs),
    flag rather than block. `check` gives '' for clean text, else the reasons joined by commas."""

    def __init__(self, setting: str = DEFAULT, threads: int = 1):
        from slmforge.guard import load_guard

        self.setting = check_setting(setting)
        if self.setting == "none":
            raise SlmError("guard: none means no ChunkGuard (check_setting first)")
        detector = "none" if self.setting == "rules" else self.setting
        self.guard = load_guard(
            {"detector": detector, "threads": threads, "default": {"pii": "allow", "injection": "flag"}}
        )
        described = self.guard.describe().get("detector")
        self.detector: str | None = None if described in (None, "rules only") else str(described)
        self.seconds = 0.0  # time spent checking, for the index report
        self.checked = 0

    @property
    def name(self) -> str:
        """What checks the chunks, in words."""
        return f"rules + detector {self.detector}" if self.detector else "rules only"

    def signature(self) -> str:
        """Changes when the rules or the detector do: the index re-checks its chunks then."""
        import slmforge.guard as guard_module

        h = hashlib.sha256()
        for name, pattern in sorted(getattr(guard_module, "RULES", {}).items()):
            h.update(f"{name}={getattr(pattern, 'pattern', pattern)}\n".encode())
        if self.detector:
            parts = ("classifier.json", "model.onnx", "model.safetensors")
            for part in (*parts, guard_module.NGRAM_FILE, guard_module.GUARD_META):
                f = Path(self.detector) / part
                if f.exists():
                    st = f.stat()
                    h.update(f"{part}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return f"{self.name}|{h.hexdigest()[:16]}"

    def check(self, text: str) -> str:
        started = time.perf_counter()
        verdict = self.guard.check(_DOC_TERMS.sub(_doc_terms, text), ROUTE)
        self.seconds += time.perf_counter() - started
        self.checked += 1
        if verdict.action == "allow":
            return ""
        reasons = [r for r in verdict.reasons if r.startswith("injection")]
        return ",".join(reasons) or verdict.action

    def check_many(self, texts: Iterable[str]) -> list[str]:
        return [self.check(t) for t in texts]


def open_guard(setting: str | None, threads: int = 1) -> ChunkGuard | None:
    """The guard for an index's `guard` setting; None for `none`."""
    value = check_setting(setting)
    return None if value == "none" else ChunkGuard(value, threads)


def source_title(section: str, doc: str) -> str:
    """How a prompt names a source: its section path, else its document's file name."""
    return section or doc.rsplit("/", 1)[-1]


def guarded_text(section: str, doc: str, text: str) -> str:
    """The part of a chunk a prompt holds, as the guard checks it: its title and its text."""
    return f"{source_title(section, doc)}\n{text}"
