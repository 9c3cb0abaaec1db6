"""Text normalisation that keeps line and paragraph structure.

`normalize(text)`:
1. Unicode NFC; line endings (CRLF, CR, U+2028/U+2029, form feed, vertical tab) become `\\n`.
2. Control and invisible format characters are removed (zero-width space, soft hyphen, BOM, bidi
   marks, C0/C1 controls) except `\\n` and `\\t` (ZWJ/ZWNJ stay: scripts and emoji need them);
   non-breaking and other Unicode spaces become plain spaces.
3. Per line: trailing whitespace is stripped; runs of spaces/tabs inside the line collapse to one
   space; leading indentation is kept (tabs expanded to 4 spaces) because code blocks and
   reStructuredText/Markdown structure depend on it.
4. At most one blank line in a row; leading and trailing blank lines are dropped.
"""

from __future__ import annotations

import re
import unicodedata

_ODD_BREAKS = re.compile(r"[\r\u2028\u2029\x0b\x0c\x85]")
# C0/C1 controls except \t and \n, DEL, and invisible format characters that only hide text.
_INVISIBLE = re.compile(
    r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u00ad\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\ufeff\ufff9-\ufffb]"
)
_UNICODE_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INNER_RUNS = re.compile(r"[ \t]{2,}|\t")


def _tidy(line: str) -> str:
    """Keep the indentation (tabs as 4 spaces); collapse every other run of spaces/tabs to one space."""
    body = line.lstrip(" \t")
    indent = line[: len(line) - len(body)]
    if "\t" in indent:
        indent = indent.replace("\t", "    ")
    if "  " in body or "\t" in body:
        body = _INNER_RUNS.sub(" ", body)
    return indent + body


def normalize(text: str) -> str:
    """NFC, no control characters, tidy whitespace, at most one blank line; newlines kept."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    # Each substitution runs only when needed: plain text skips them at the cost of one fast scan.
    if _ODD_BREAKS.search(text):
        text = _ODD_BREAKS.sub("\n", text.replace("\r\n", "\n"))
    if _INVISIBLE.search(text):
        text = _INVISIBLE.sub("", text)
    if _UNICODE_SPACES.search(text):
        text = _UNICODE_SPACES.sub(" ", text)
    lines: list[str] = []
    blank = True  # True at the start too, so leading blank lines are dropped
    for line in text.split("\n"):
        line = line.rstrip(" \t")
        if not line:
            if not blank:
                lines.append("")
                blank = True
            continue
        blank = False
        lines.append(_tidy(line) if "  " in line or "\t" in line else line)
    if lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def canonical(text: str) -> str:
    """The form used for exact-duplicate detection: whitespace-insensitive normalised text."""
    return " ".join(text.split())
