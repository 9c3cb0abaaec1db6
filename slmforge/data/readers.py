"""Read documents from files and folders: .txt .md .rst .html .jsonl .csv, streamed, in a fixed order.

- Folders are walked recursively in sorted order; hidden files and folders (`.git`, ...) are ignored;
  files with other extensions are counted as `unsupported`. `X.rst.txt` / `X.md.txt` (Sphinx's
  `_sources`) read as rst / md.
- txt/md/rst: one document per file with its lines and blank-line paragraphs intact; a file larger
  than `MAX_DOC_CHARS` is cut at paragraph boundaries into several documents (`path:LINE`), so one
  huge file never has to sit in memory whole.
- html: clean text via `html.parser` (script/style/nav/head and role=navigation dropped, headings and
  paragraphs become their own blank-line separated blocks, list items their own lines, <pre> kept).
- jsonl: one document per line from `text_field` (`path:LINE`); lines that are not JSON objects with a
  string in that field are counted as `malformed` and skipped.
- csv: one document per row from `text_column` (`path:ROW`); a missing column is an SlmError naming the
  columns found.
- Files containing NUL bytes are `binary`, files that are not valid UTF-8 are `non_utf8`: both are
  skipped and counted in the `ReadStats` passed in, never a crash.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from slmforge.errors import SlmError

MAX_DOC_CHARS = 1 << 20  # text files above this are split into ~1 MiB documents at paragraph breaks
_CHUNK = 1 << 20

# Longest suffix first, so X.rst.txt is rst and X.txt is txt.
_SUFFIXES = (
    (".rst.txt", "rst"),
    (".md.txt", "md"),
    (".markdown", "md"),
    (".ndjson", "jsonl"),
    (".jsonl", "jsonl"),
    (".xhtml", "html"),
    (".html", "html"),
    (".htm", "html"),
    (".txt", "txt"),
    (".rst", "rst"),
    (".md", "md"),
    (".csv", "csv"),
)
FORMATS = ("txt", "md", "rst", "html", "jsonl", "csv")


@dataclass
class Document:
    """One document: where it came from (`path`, or `path:LINE` / `path:ROW`), its text and format."""

    source: str
    text: str
    fmt: str


@dataclass
class ReadStats:
    """Counters filled in while reading; pass one to `iter_documents` to see what was skipped."""

    files: int = 0  # supported files opened
    bytes: int = 0  # bytes of those files
    binary: int = 0  # files skipped: NUL bytes
    non_utf8: int = 0  # files skipped: not valid UTF-8
    unsupported: int = 0  # files with an extension we do not read
    malformed: int = 0  # jsonl lines / csv rows skipped (bad JSON, not an object, no string field)
    missing_field: int = 0  # of those, jsonl lines without `text_field`
    documents: int = 0  # documents yielded
    by_format: dict[str, int] = field(default_factory=dict)


def file_format(path: str | Path) -> str | None:
    """The reader format for a file name, or None when it is not one we read."""
    name = str(path).lower()
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    return None


def _inside(path: Path, folders: Iterable[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def iter_files(paths: Iterable[str | Path], *, exclude: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Every file under `paths`: recursive, sorted by path, hidden entries and `exclude` left out.

    A path given inside another given folder is not read twice; folder symlinks are not followed
    (no loops). Only the current folder's listing is held in memory. Raises SlmError for a path that
    does not exist.
    """
    excluded = [Path(p).expanduser().resolve() for p in exclude]
    roots: dict[Path, Path] = {}
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise SlmError(f"path not found: {p}")
        roots.setdefault(path.resolve(), path)
    dirs = [r for r in roots if r.is_dir()]
    keep = sorted(r for r in roots if not _inside(r, excluded) and not any(d in r.parents for d in dirs))

    def walk(d: Path) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:  # an unreadable folder has nothing for us
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                if not _inside(Path(e.path).resolve(), excluded):
                    yield from walk(Path(e.path))
            elif e.is_file():
                yield Path(e.path)

    for r in keep:
        yield from walk(roots[r]) if r.is_dir() else [roots[r]]


def _probe(path: Path) -> str | None:
    """'binary' (NUL bytes), 'non_utf8', or None when the whole file is clean UTF-8 text. Streams."""
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                if b"\x00" in block:
                    return "binary"
                dec.decode(block)
            dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return "non_utf8"
    return None


def iter_documents(
    paths: Iterable[str | Path],
    *,
    text_field: str = "text",
    text_column: str = "text",
    stats: ReadStats | None = None,
    exclude: Iterable[str | Path] = (),
) -> Iterator[Document]:
    """Stream the documents under `paths` in a deterministic order (see the module docstring)."""
    stats = stats if stats is not None else ReadStats()
    for path in iter_files(paths, exclude=exclude):
        fmt = file_format(path)
        if fmt is None:
            stats.unsupported += 1
            continue
        stats.files += 1
        stats.bytes += path.stat().st_size
        bad = _probe(path)
        if bad is not None:
            setattr(stats, bad, getattr(stats, bad) + 1)
            continue
        if fmt == "jsonl":
            docs = _read_jsonl(path, text_field, stats)
        elif fmt == "csv":
            docs = _read_csv(path, text_column, stats)
        elif fmt == "html":
            docs = _read_html(path)
        else:
            docs = _read_text(path, fmt)
        for doc in docs:
            stats.documents += 1
            stats.by_format[fmt] = stats.by_format.get(fmt, 0) + 1
            yield doc


def _read_text(path: Path, fmt: str) -> Iterator[Document]:
    if path.stat().st_size <= MAX_DOC_CHARS:
        yield Document(str(path), path.read_text(encoding="utf-8-sig"), fmt)
        return
    # Large file: cut at a blank line once a piece reaches MAX_DOC_CHARS (hard cut at twice that).
    buf: list[str] = []
    size, start = 0, 1
    with open(path, encoding="utf-8-sig", newline="") as f:
        for lineno, line in enumerate(f, 1):
            buf.append(line)
            size += len(line)
            if (size >= MAX_DOC_CHARS and not line.strip()) or size >= 2 * MAX_DOC_CHARS:
                yield Document(f"{path}:{start}", "".join(buf), fmt)
                buf, size, start = [], 0, lineno + 1
    if buf:
        yield Document(f"{path}:{start}", "".join(buf), fmt)


def _read_jsonl(path: Path, text_field: str, stats: ReadStats) -> Iterator[Document]:
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                stats.malformed += 1
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                stats.malformed += 1
                if isinstance(obj, dict) and text_field not in obj:
                    stats.missing_field += 1
                continue
            yield Document(f"{path}:{lineno}", obj[text_field], "jsonl")


def _read_csv(path: Path, text_column: str, stats: ReadStats) -> Iterator[Document]:
    csv.field_size_limit(64 << 20)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        if text_column not in header:
            found = ", ".join(repr(h) for h in header[:20]) or "none"
            raise SlmError(f"{path}: no column {text_column!r} (columns: {found}); set --text-column")
        col = header.index(text_column)
        for row_no, row in enumerate(reader, 1):
            if not row:
                continue
            if len(row) <= col:
                stats.malformed += 1
                continue
            yield Document(f"{path}:{row_no}", row[col], "csv")


# ---------------------------------------------------------------- HTML to text

_SKIP = {"script", "style", "nav", "head", "noscript", "template", "svg", "iframe", "button", "form"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_PARA = {
    "p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "figure",
    "table", "ul", "ol", "dl", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "address", "details", "summary",
    "body", "html", "caption", "figcaption", "fieldset",
}  # fmt: skip
_LINE = {"li", "tr", "dt", "dd"}
_WS = re.compile(r"\s+")


class _HtmlText(HTMLParser):
    """Collects visible text as blocks; `text()` joins them with the right line/paragraph breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []  # finished text, separators included
        self.buf: list[str] = []  # the block being built
        self.pending = ""  # separator owed before the next non-empty block
        self.skip_tag: str | None = None
        self.skip_depth = 0
        self.pre = 0

    # -- structure
    def _break(self, sep: str) -> None:
        raw = "".join(self.buf)
        self.buf = []
        if self.pre:
            text = "\n".join(ln.rstrip() for ln in raw.strip("\n").split("\n"))
        else:
            text = "\n".join(" ".join(ln.split()) for ln in raw.split("\n"))
            text = "\n".join(ln for ln in text.split("\n") if ln)
        if text.strip():
            if self.blocks:
                self.blocks.append(self.pending or "\n")
            self.blocks.append(text)
            self.pending = ""
        if self.blocks and len(sep) > len(self.pending):
            self.pending = sep

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        attrs = dict(attrs)
        if (tag in _SKIP or attrs.get("role") == "navigation" or attrs.get("aria-hidden") == "true") and (
            tag not in _VOID
        ):
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "pre":
            self._break("\n\n")
            self.pre += 1
        elif tag == "br":
            self.buf.append("\n")
        elif tag in _PARA:
            self._break("\n\n")
        elif tag in _LINE:
            self._break("\n")
            if tag == "li":
                self.buf.append("- ")
        elif tag in ("td", "th"):
            self.buf.append(" ")

    def handle_startendtag(self, tag, attrs):
        if self.skip_tag is None and tag == "br":
            self.buf.append("\n")
        elif self.skip_tag is None and tag == "hr":
            self._break("\n\n")

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag == "pre" and self.pre:
            self._break("\n\n")
            self.pre -= 1
        elif tag in _PARA:
            self._break("\n\n")
        elif tag in _LINE:
            self._break("\n")

    def handle_data(self, data):
        if self.skip_tag is None:
            self.buf.append(data if self.pre else _WS.sub(" ", data))

    def take(self) -> str:
        """The text collected so far (and forget it)."""
        text, self.blocks, self.pending = "".join(self.blocks), [], ""
        return text

    def text(self) -> str:
        self.close()
        self._break("")
        return self.take()

    def size(self) -> int:
        return sum(len(b) for b in self.blocks)


def html_to_text(html: str) -> str:
    """Visible text of an HTML page, headings and paragraphs as blank-line separated blocks."""
    parser = _HtmlText()
    parser.feed(html)
    return parser.text()


def _read_html(path: Path) -> Iterator[Document]:
    parser = _HtmlText()
    if path.stat().st_size <= MAX_DOC_CHARS:
        yield Document(str(path), html_to_text(path.read_text(encoding="utf-8-sig")), "html")
        return
    # Large page: hand out the finished blocks whenever they reach MAX_DOC_CHARS.
    start = 1
    with open(path, encoding="utf-8-sig") as f:
        while chunk := f.read(_CHUNK // 4):
            parser.feed(chunk)
            if parser.size() >= MAX_DOC_CHARS:
                yield Document(f"{path}:{start}", parser.take(), "html")
                start = parser.getpos()[0]
    yield Document(f"{path}:{start}", parser.text(), "html")


__all__ = ["Document", "ReadStats", "FORMATS", "file_format", "iter_files", "iter_documents", "html_to_text"]
