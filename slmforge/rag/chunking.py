"""Structure-aware chunking: headings give each chunk a section path; paragraphs, code blocks and API
entries are the units packed into chunks, kept whole where they fit.

- Headings: reST (a title underlined, optionally overlined, with one punctuation character; levels in
  order of first appearance, as docutils assigns them) and Markdown (`#` … `######`, and `===`/`---`
  underlines). A chunk never spans two sections. reST object entries at column 0
  (`.. function:: dumps(...)`, `.. class::`, `.. method::` …) add their name as a last section level.
- PDF and DOCX documents come with `marks` from the reader, (offset, section) where a page ("page 3")
  or a heading's section ("Title > Heading") starts: the text is cut there, each piece a section of its
  own, so a chunk never spans two pages; inside a piece, paragraphs are units as in plain text.
- Units are blank-line separated paragraphs. An indented paragraph that follows a `::` paragraph, a
  directive or another indented paragraph belongs with it (a code sample stays with its introduction,
  a directive with its body); a Markdown fenced block is one unit however many blank lines it holds.
- Packing: units are added to the current chunk while it stays within `max_chars`; a unit too big on
  its own is cut at line breaks (then at spaces). Consecutive chunks of one section overlap by up to
  `overlap` characters, starting at a line or word boundary.
- Every chunk is a slice of the document: `text == document[start:end]`, so offsets point into it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slmforge.core.errors import SlmError


@dataclass
class ChunkConfig:
    """How documents are cut into chunks (see the module docstring)."""

    max_chars: int = 800
    """Largest chunk, in characters.

    About 4 characters per token: 800 fits MiniLM's 256 tokens."""
    overlap: int = 100
    """Characters shared by consecutive chunks of a section.

    Repeated from the end of the previous chunk of the same section."""
    min_chars: int = 20
    """Chunks with fewer non-space characters are dropped (rules, lone labels)."""


@dataclass
class Chunk:
    """A piece of one document: its section path (`Title > Section > entry`), offsets and text."""

    section: str
    start: int
    end: int
    text: str


def chunk_document(
    text: str, fmt: str = "txt", cfg: ChunkConfig | None = None, marks: list[tuple[int, str]] | None = None
) -> list[Chunk]:
    """Split one document's text into chunks (see the module docstring); `marks` as `Document.marks`."""
    cfg = cfg or ChunkConfig()
    if cfg.max_chars < 50:
        raise SlmError(f"chunk size must be at least 50 characters (got {cfg.max_chars})")
    if not 0 <= cfg.overlap < cfg.max_chars // 2:
        raise SlmError(f"chunk overlap must be in [0, {cfg.max_chars // 2}) (got {cfg.overlap})")
    chunks: list[Chunk] = []
    for section, units in _marked(text, marks) if marks else _sections(text, fmt):
        chunks += _pack(text, section, units, cfg)
    return [c for c in chunks if len(c.text.strip()) >= cfg.min_chars]


# ---------------------------------------------------------------- structure

_ADORN = re.compile(r"^([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_OBJECT = re.compile(
    r"^\.\. (?:py:)?(function|method|class|exception|data|attribute|decorator|classmethod|staticmethod"
    r"|module|opcode|envvar|option|cmdoption|describe|c:function|c:macro|c:type|c:member)::\s*(.+)$"
)
_ROLE = re.compile(r":[\w:+.-]+:`[~!]?([^`<]*?)\s*(?:<[^>]*>)?`")


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line, end excluding the newline."""
    spans, pos = [], 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        spans.append((pos, pos + len(body)))
        pos += len(line)
    return spans


def _clean_title(title: str) -> str:
    title = _ROLE.sub(r"\1", title.strip()).replace("\\ ", "")
    return re.sub(r"[`*]+", "", title).strip()


def _object_name(signature: str) -> str:
    name = signature.split("(", 1)[0].strip()
    return name.split()[-1] if name.split() else name


def _sections(text: str, fmt: str) -> list[tuple[str, list[tuple[int, int]]]]:
    """[(section path, [unit spans])] in document order; heading lines belong to no unit."""
    lines = _lines(text)
    structured = fmt in ("rst", "md")
    levels: dict[str, int] = {}  # reST adornment style -> level
    stack: list[str] = []  # heading titles, outermost first
    entry: str | None = None  # reST object entry under the current heading
    out: list[tuple[str, list[tuple[int, int]]]] = []
    units: list[tuple[int, int]] = []
    para: list[int] = []  # line indexes of the paragraph being read
    fence = False

    def path() -> str:
        return " > ".join([*stack, entry] if entry else stack)

    def close_section() -> None:
        nonlocal units
        flush()
        if units:
            out.append((path(), units))
        units = []

    def flush() -> None:
        nonlocal para
        if para:
            first, last = lines[para[0]], lines[para[-1]]
            units.append((first[0], last[1]))
        para = []

    def heading(level: int, title: str) -> None:
        nonlocal entry
        close_section()
        del stack[level - 1 :]
        stack.extend([""] * (level - 1 - len(stack)))
        stack.append(_clean_title(title))
        entry = None

    i, n = 0, len(lines)
    while i < n:
        s, e = lines[i]
        line = text[s:e]
        if fmt == "md" and _FENCE.match(line):
            fence = not fence
            para.append(i)
            i += 1
            continue
        if fence:
            para.append(i)
            i += 1
            continue
        if structured and line.strip() and i + 1 < n:
            nxt = text[lines[i + 1][0] : lines[i + 1][1]]
            over = i > 0 and _ADORN.match(text[lines[i - 1][0] : lines[i - 1][1]] or "")
            m = _ADORN.match(nxt)
            if (
                m
                and not line[:1].isspace()
                and len(nxt.rstrip()) >= len(line.rstrip()) - 2
                and not _ADORN.match(line)
                and (fmt == "rst" or m.group(1) in "=-")
                and not para
            ):
                style = ("o" if over else "u") + m.group(1)
                level = (
                    levels.setdefault(style, len(levels) + 1)
                    if fmt == "rst"
                    else (1 if m.group(1) == "=" else 2)
                )
                heading(level, line)
                i += 2
                continue
        if structured and _ADORN.match(line) and not para:
            i += 1  # an overline, or a transition (----): not text
            continue
        if fmt == "md" and (m := _MD_HEADING.match(line)) and not para:
            heading(len(m.group(1)), m.group(2))
            i += 1
            continue
        if fmt == "rst" and (m := _OBJECT.match(line)) and not para:
            close_section()
            entry = _object_name(m.group(2)) if m.group(1) != "module" else None
        if not line.strip():
            if para and not _glues(text, lines, para, i):
                flush()
            i += 1
            continue
        para.append(i)
        i += 1
    close_section()
    return out


def _marked(text: str, marks: list[tuple[int, str]]) -> list[tuple[str, list[tuple[int, int]]]]:
    """Sections cut at the marks' offsets (text before the first mark has no section), plain-text units."""
    bounds = [(0, ""), *sorted(marks), (len(text), "")]
    out = []
    for (start, section), (end, _) in zip(bounds, bounds[1:]):
        units = [(start + s, start + e) for _, spans in _sections(text[start:end], "txt") for s, e in spans]
        if units:
            out.append((section, units))
    return out


def _glues(text: str, lines: list[tuple[int, int]], para: list[int], blank: int) -> bool:
    """True when the paragraph goes on past this blank line: the next text is indented and the paragraph
    is a `::` introduction, a directive, or itself indented (a code sample or a directive body)."""
    j = blank
    while j < len(lines) and not text[lines[j][0] : lines[j][1]].strip():
        j += 1
    if j == len(lines):
        return False
    nxt = text[lines[j][0] : lines[j][1]]
    if not nxt[:1].isspace():
        return False
    first = text[lines[para[0]][0] : lines[para[0]][1]]
    last = text[lines[para[-1]][0] : lines[para[-1]][1]].rstrip()
    return last.endswith("::") or first.startswith(".. ") or first[:1].isspace()


# ---------------------------------------------------------------- packing


def _pack(text: str, section: str, units: list[tuple[int, int]], cfg: ChunkConfig) -> list[Chunk]:
    pieces: list[tuple[int, int]] = []
    for s, e in units:
        pieces += [(s, e)] if e - s <= cfg.max_chars else _split(text, s, e, cfg.max_chars)
    chunks: list[Chunk] = []
    start = end = None
    for s, e in pieces:
        if start is None:
            start, end = s, e
        elif e - start <= cfg.max_chars:
            end = e
        else:
            chunks.append(Chunk(section, start, end, text[start:end]))
            start = _overlap_start(text, start, end, s, e, cfg)
            end = e
    if start is not None:
        chunks.append(Chunk(section, start, end, text[start:end]))
    return chunks


def _overlap_start(text: str, prev_start: int, prev_end: int, s: int, e: int, cfg: ChunkConfig) -> int:
    """Start of the next chunk: up to `overlap` characters before `s`, at a line or word boundary."""
    if cfg.overlap == 0:
        return s
    lo = max(prev_start + 1, prev_end - cfg.overlap, e - cfg.max_chars)
    if lo >= s:
        return s
    window = text[lo:s]
    nl = window.find("\n")
    if nl >= 0 and window[nl + 1 :].strip():
        return lo + nl + 1
    sp = window.find(" ")
    return lo + sp + 1 if sp >= 0 and window[sp + 1 :].strip() else s


def _split(text: str, s: int, e: int, limit: int) -> list[tuple[int, int]]:
    """Cut [s, e) into pieces of at most `limit` characters at line breaks, else spaces, else anywhere."""
    pieces = []
    while e - s > limit:
        window = text[s : s + limit]
        cut = window.rfind("\n")
        if cut < limit // 4:
            cut = window.rfind(" ")
        if cut < limit // 4:
            cut = limit
        pieces.append((s, s + cut))
        s += cut
        while s < e and text[s] in " \n\r\t":
            s += 1
    if s < e:
        pieces.append((s, e))
    return pieces
