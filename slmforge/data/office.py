"""Text out of PDF and DOCX files, for `readers`: pages of a PDF (pypdf), paragraphs, headings and tables of a
DOCX (python-docx). Both libraries are imported only when such a file is read.

- PDF: `pdf_pages` yields every page's text with its number ("" for a page without a text layer: a
  scanned page, or one that is all drawings; a page pypdf fails on reads as ""). An encrypted PDF is
  opened with the empty password (which many "protected" PDFs use); one that needs a real password is
  `Unreadable`, like a corrupt one. pypdf's warnings about damaged files never reach the terminal.
- DOCX: `docx_blocks` yields the body in document order as (section path, text): a heading (styles
  Title and Heading 1 … 9; Title above Heading 1) opens a section and is its first block; a table is one
  block, a line per row, the row's cells joined by ' | ' (a merged cell once). Headers, footers,
  comments and text boxes are left out.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

_HEADING = re.compile(r"^heading ([1-9])$")


class Unreadable(Exception):
    """A PDF or DOCX that cannot be read; the message says why, in one line."""


def _line(e: BaseException) -> str:
    text = " ".join(str(e).split())[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pypdf reports damaged files on its logger (shown on stderr when nothing else handles it): mute it."""
    log = logging.getLogger("pypdf")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def pdf_pages(path: str | Path) -> Iterator[tuple[int, str]]:
    """(page number from 1, text) for every page of a PDF; raises `Unreadable` before the first page."""
    from pypdf import PasswordType, PdfReader

    with _quiet():
        try:
            reader = PdfReader(path)
            if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
                raise Unreadable("encrypted PDF (needs a password)")
            n = len(reader.pages)
        except Unreadable:
            raise
        except Exception as e:  # pypdf raises many kinds on a damaged file: any of them means "cannot read"
            raise Unreadable(f"not a readable PDF ({_line(e)})") from None
    for i in range(n):
        with _quiet():
            try:
                text = reader.pages[i].extract_text() or ""
            except Exception:  # one damaged page: no text from it, the others still count
                text = ""
        yield i + 1, text


def _level(paragraph) -> int | None:
    """0 for Title, N for Heading N, None for body text."""
    try:
        name = (paragraph.style.name or "").strip().lower()
    except Exception:  # a style that names a missing style part
        return None
    if name == "title":
        return 0
    m = _HEADING.match(name)
    return int(m.group(1)) if m else None


def _rows(table) -> Iterator[str]:
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell is listed once per grid column it spans
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            yield " | ".join(cells)


def docx_blocks(path: str | Path) -> Iterator[tuple[str, str]]:
    """(section path, text) for the body's paragraphs and tables in order; raises `Unreadable` first."""
    import docx
    from docx.table import Table

    try:
        document = docx.Document(str(path))
    except Exception as e:  # not a zip (an encrypted or old .doc file), no document part, bad XML ...
        raise Unreadable(f"not a readable DOCX ({_line(e)})") from None
    stack: list[tuple[int, str]] = []  # open headings: (level, title)
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            text = "\n".join(_rows(block))
        else:
            text = block.text.strip()
            level = _level(block)
            if level is not None and text:
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, " ".join(text.split())))
        if text:
            yield " > ".join(title for _, title in stack), text
