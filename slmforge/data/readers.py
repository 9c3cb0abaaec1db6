"""Read documents from files and folders: .txt .md .rst .html .jsonl .csv .pdf .docx, streamed, in a fixed order.

- Folders are walked recursively in sorted order; hidden files and folders (`.git`, ...) are ignored;
  files with other extensions are counted as `unsupported`. `X.rst.txt` / `X.md.txt` (Sphinx's
  `_sources`) read as rst / md.
- txt/md/rst: one document per file with its lines and blank-line paragraphs intact; a file larger
  than `MAX_DOC_CHARS` is cut at paragraph boundaries into several documents (`path:LINE`), so one
  huge file never has to sit in memory whole.
- html: clean text via `html.parser` (script/style/nav/head and role=navigation dropped, headings and
  paragraphs become their own blank-line separated blocks, list items their own lines, <pre> kept).
  Text a browser does not show is dropped too, so it never reaches an index or a prompt (a page can hide
  an injection from its readers that way): elements with the `hidden` attribute (not `until-found`,
  which the browser reveals on find), an inline style with `display: none` or `visibility: hidden` /
  `collapse` (case, spaces, `!important` and CSS comments ignored), `aria-hidden="true"`, <template>,
  <noscript> and a <dialog> that is not `open`; `ReadStats.hidden_html` counts those elements. Text
  hidden by a stylesheet rule or a class (`.hidden {...}`), by `opacity: 0`, `font-size: 0` or
  off-screen positioning is kept: telling it apart needs the page's CSS, and those styles also hide
  content that scripts reveal. `slm rag index` runs the injection guard on every chunk for that reason.
- jsonl: one document per line from `text_field` (`path:LINE`); lines that are not JSON objects with a
  string in that field are counted as `malformed` and skipped.
- csv: one document per row from `text_column` (`path:ROW`); a missing column is an SlmError naming the
  columns found.
- pdf/docx (text extracted by `slmforge.data.office`): one document per file, pages (PDF) or
  paragraphs and tables (DOCX) as blank-line separated blocks; `Document.marks` says where each page
  ("page 3") or heading section ("Title > Heading > Subheading") starts, for the chunker. Pages without
  text (scanned) are counted in `pdf_pages_without_text`; a corrupt or password-protected file is
  counted in `corrupt` with a one-line note in `ReadStats.notes`. A text over `MAX_DOC_CHARS` is cut
  between pages / blocks into documents `path:N`, N the first page (PDF) or block (DOCX).
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

from slmforge.core.errors import SlmError
from slmforge.data import office

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
    (".pdf", "pdf"),
    (".docx", "docx"),
)
FORMATS = ("txt", "md", "rst", "html", "jsonl", "csv", "pdf", "docx")
MAX_NOTES = 100  # notes kept in ReadStats.notes (the counters count them all)


@dataclass
class Document:
    """One document: where it came from (`path`, or `path:LINE` / `path:ROW`), its text and format."""

    source: str
    text: str
    fmt: str
    marks: list[tuple[int, str]] = field(default_factory=list)  # pdf/docx: (offset, section) where one starts


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
    hidden_html: int = 0  # HTML elements dropped because a browser would not show them
    pdf_pages_without_text: int = 0  # PDF pages skipped: no text layer (scanned, drawings only)
    corrupt: int = 0  # PDF/DOCX files skipped: damaged, encrypted, or not what their name says
    notes: list[str] = field(default_factory=list)  # one line per file skipped or partly read (pdf/docx)
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
        bad = None if fmt in ("pdf", "docx") else _probe(path)
        if bad is not None:
            setattr(stats, bad, getattr(stats, bad) + 1)
            continue
        if fmt in ("pdf", "docx"):
            docs = _read_office(path, fmt, stats)
        elif fmt == "jsonl":
            docs = _read_jsonl(path, text_field, stats)
        elif fmt == "csv":
            docs = _read_csv(path, text_column, stats)
        elif fmt == "html":
            docs = _read_html(path, stats)
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


def _note(stats: ReadStats, line: str) -> None:
    if len(stats.notes) < MAX_NOTES:
        stats.notes.append(line)


def _read_office(path: Path, fmt: str, stats: ReadStats) -> Iterator[Document]:
    """A PDF's pages or a DOCX's blocks as documents whose marks name the page / heading section."""
    if fmt == "pdf":
        blocks = ((f"page {n}", text, n) for n, text in office.pdf_pages(path))
    else:
        blocks = ((section, text, n) for n, (section, text) in enumerate(office.docx_blocks(path), 1))
    parts: list[str] = []
    marks: list[tuple[int, str]] = []
    size = empty = pages = start = 0
    section, cut = "", False
    try:
        for where, text, n in blocks:
            pages, text = n, text.strip()
            if not text:
                empty += 1
                continue
            if size >= MAX_DOC_CHARS:
                yield Document(f"{path}:{start}", "".join(parts), fmt, marks)
                parts, marks, size, cut = [], [], 0, True
            if not parts:
                start = n
            else:
                parts.append("\n\n")
                size += 2
            if not marks or where != section:
                marks.append((size, where))
                section = where
            parts.append(text)
            size += len(text)
    except office.Unreadable as e:
        stats.corrupt += 1
        _note(stats, f"{path}: {e}: skipped")
        return
    if fmt == "pdf" and empty:
        stats.pdf_pages_without_text += empty
        what = "none of its pages has" if empty == pages else f"{empty} of its {pages} pages have no"
        _note(stats, f"{path}: {what} text (scanned? OCR it to read them): skipped")
    if parts:
        yield Document(f"{path}:{start}" if cut else str(path), "".join(parts), fmt, marks)


# ---------------------------------------------------------------- HTML to text

_SKIP = {"script", "style", "nav", "head", "noscript", "template", "svg", "iframe", "button", "form"}
_NOT_SHOWN = {"noscript", "template"}  # of those, the ones that hold page text a browser never shows
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_PARA = {
    "p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote", "figure",
    "table", "ul", "ol", "dl", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "address", "details", "summary",
    "body", "html", "caption", "figcaption", "fieldset",
}  # fmt: skip
_LINE = {"li", "tr", "dt", "dd"}
_WS = re.compile(r"\s+")
# HTML's optional end tags: an open element that the start of another one closes, and the end tags of
# the parents that close it. A hidden <li> or <p> left unclosed must end where a browser ends it, not
# swallow (or, worse, release) the rest of the page.
_TABLE = {"table", "tbody", "thead", "tfoot"}
_CLOSED_BY_START = {
    "p": _PARA | {"pre", "menu", "hgroup", "nav", "form", "li", "dt", "dd"},
    "li": {"li"},
    "dt": {"dt", "dd"},
    "dd": {"dt", "dd"},
    "tr": {"tr"} | _TABLE,
    "td": {"td", "th", "tr"} | _TABLE,
    "th": {"td", "th", "tr"} | _TABLE,
    "option": {"option", "optgroup"},
}
_CLOSED_BY_END = {
    "p": _PARA | {"li", "dd", "dt", "td", "th", "nav", "form", "menu"},
    "li": {"ul", "ol", "menu"},
    "dt": {"dl"},
    "dd": {"dl"},
    "tr": _TABLE,
    "td": {"tr"} | _TABLE,
    "th": {"tr"} | _TABLE,
    "option": {"select", "optgroup", "datalist"},
}
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.S)
_CSS_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})\s?|(.))", re.S)


def _css_unescape(m: re.Match) -> str:
    if m.group(1):
        code = int(m.group(1), 16)
        return chr(code) if 0 < code <= 0x10FFFF else "\ufffd"
    return m.group(2)


def style_hides(style: str) -> bool:
    """Does an inline `style` attribute hide its element (display: none, visibility: hidden/collapse)?

    Read as a browser reads it: case and spaces ignored, comments and escapes undone, the last
    declaration of a property wins unless an earlier one is `!important` and it is not."""
    css = _CSS_ESCAPE.sub(_css_unescape, _CSS_COMMENT.sub("", style)).lower()
    seen: dict[str, tuple[str, bool]] = {}
    for decl in css.split(";"):
        prop, colon, value = decl.partition(":")
        if not colon:
            continue
        prop, value = prop.strip(), "".join(value.split())
        important = value.endswith("!important")
        value = value.removesuffix("!important")
        if prop in seen and seen[prop][1] and not important:
            continue
        seen[prop] = (value, important)
    display = seen.get("display", ("", False))[0]
    visibility = seen.get("visibility", ("", False))[0]
    return display == "none" or visibility in ("hidden", "collapse")


def _first_attrs(attrs: list[tuple[str, str | None]]) -> dict[str, str | None]:
    """Attributes by name, the first of a repeated one winning (as in a browser; dict() keeps the last)."""
    out: dict[str, str | None] = {}
    for name, value in attrs:
        out.setdefault(name, value)
    return out


def _not_shown(tag: str, attrs: dict[str, str | None]) -> bool:
    """Would a browser leave this element's content off the page?"""
    if tag in _NOT_SHOWN:
        return True
    if "hidden" in attrs and (attrs["hidden"] or "").strip().lower() != "until-found":
        return True  # hidden="until-found" is revealed by find-in-page: it is content
    if (attrs.get("aria-hidden") or "").strip().lower() == "true":
        return True
    if tag == "dialog" and "open" not in attrs:
        return True
    return bool(attrs.get("style")) and style_hides(attrs["style"] or "")


class _HtmlText(HTMLParser):
    """Collects visible text as blocks; `text()` joins them with the right line/paragraph breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []  # finished text, separators included
        self.buf: list[str] = []  # the block being built
        self.pending = ""  # separator owed before the next non-empty block
        self.skipping: list[str] = []  # open elements of the dropped subtree, its root first
        self.pre = 0
        self.hidden = 0  # elements dropped because a browser would not show them

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

    def _skip_start(self, tag: str) -> bool:
        """A start tag inside a dropped subtree: True while it stays dropped."""
        while self.skipping and tag in _CLOSED_BY_START.get(self.skipping[-1], ()):
            self.skipping.pop()
        if not self.skipping:
            return False  # it closed the dropped element: this one is shown
        if tag not in _VOID:
            self.skipping.append(tag)
        return True

    def _skip_end(self, tag: str) -> bool:
        """An end tag inside a dropped subtree: True when it was consumed there."""
        if tag not in self.skipping:
            if tag not in _CLOSED_BY_END.get(self.skipping[-1], ()):
                return True  # a stray end tag: a browser ignores it, and so do we
            while self.skipping and tag in _CLOSED_BY_END.get(self.skipping[-1], ()):
                self.skipping.pop()
            if self.skipping and tag in self.skipping:
                del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag) :]
            return bool(self.skipping)  # else it ends a shown parent too
        del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag) :]
        return True

    def handle_starttag(self, tag, attrs):
        if self.skipping and self._skip_start(tag):
            return
        attrs = _first_attrs(attrs)
        if tag not in _VOID:
            if _not_shown(tag, attrs):
                self.hidden += 1
                self.skipping = [tag]
                return
            if tag in _SKIP or attrs.get("role") == "navigation":
                self.skipping = [tag]
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
        # `<div hidden/>` opens a div in HTML (the slash only closes void and foreign elements), so a
        # self-closed hidden element still hides what follows it, as in a browser. A self-closed
        # <script/>, <svg/> ... stays closed, as it always was here (XHTML pages write them so).
        self.handle_starttag(tag, attrs)
        if tag in _SKIP and self.skipping == [tag]:
            self.skipping = []

    def handle_endtag(self, tag):
        if self.skipping and self._skip_end(tag):
            return
        if tag == "pre" and self.pre:
            self._break("\n\n")
            self.pre -= 1
        elif tag in _PARA:
            self._break("\n\n")
        elif tag in _LINE:
            self._break("\n")

    def handle_data(self, data):
        if not self.skipping:
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


def html_to_text(html: str, stats: ReadStats | None = None) -> str:
    """Visible text of an HTML page, headings and paragraphs as blank-line separated blocks; the
    elements dropped as not shown (see the module docstring) are counted in `stats.hidden_html`."""
    parser = _HtmlText()
    parser.feed(html)
    text = parser.text()
    if stats is not None:
        stats.hidden_html += parser.hidden
    return text


def _read_html(path: Path, stats: ReadStats) -> Iterator[Document]:
    if path.stat().st_size <= MAX_DOC_CHARS:
        yield Document(str(path), html_to_text(path.read_text(encoding="utf-8-sig"), stats), "html")
        return
    parser = _HtmlText()
    # Large page: hand out the finished blocks whenever they reach MAX_DOC_CHARS.
    start = 1
    with open(path, encoding="utf-8-sig") as f:
        while chunk := f.read(_CHUNK // 4):
            parser.feed(chunk)
            if parser.size() >= MAX_DOC_CHARS:
                yield Document(f"{path}:{start}", parser.take(), "html")
                start = parser.getpos()[0]
    text = parser.text()
    stats.hidden_html += parser.hidden
    yield Document(f"{path}:{start}", text, "html")


__all__ = [
    "Document", "ReadStats", "FORMATS", "file_format", "iter_files", "iter_documents", "html_to_text",
    "style_hides",
]  # fmt: skip
