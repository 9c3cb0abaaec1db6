"""PDF and DOCX readers: real files (tests/data/files/README.md says where each comes from) and made ones
for the edge cases: a page without text, an encrypted and a corrupt PDF, a DOCX with headings and a table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.data import readers
from slmforge.data.readers import ReadStats, iter_documents
from slmforge.rag.chunking import ChunkConfig, chunk_document

FILES = Path(__file__).parent / "files"
SPEC_PDF = FILES / "shared-mime-info-spec.pdf"
MATPLOTLIB_ICON = "mpl-data/images/hand.pdf"  # a real PDF that is all drawing: no text layer


def make_pdf(path: Path, pages: list[str | None]) -> Path:
    """A minimal, valid PDF: a page of Helvetica lines per string, an image-only page (a 'scan') per None."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", "", "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    objs.append("<< /Type /XObject /Subtype /Image /Width 1 /Height 1 /ColorSpace /DeviceGray "
                "/BitsPerComponent 8 /Length 1 >>\nstream\n\x80\nendstream")  # fmt: skip
    kids = []
    for text in pages:
        if text is None:
            ops = "q 200 0 0 200 100 400 cm /Im1 Do Q"
        else:
            ops = (
                "BT /F1 12 Tf 14 TL 72 720 Td "
                + " ".join(f"({line}) Tj T*" for line in text.split("\n"))
                + " ET"
            )
        objs.append(f"<< /Length {len(ops)} >>\nstream\n{ops}\nendstream")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objs)} 0 R "
            "/Resources << /Font << /F1 3 0 R >> /XObject << /Im1 4 0 R >> >> >>"
        )
        kids.append(f"{len(objs)} 0 R")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)
    return path


def read(path: Path) -> tuple[list[readers.Document], ReadStats]:
    stats = ReadStats()
    return list(iter_documents([path], stats=stats)), stats


# ---------------------------------------------------------------- PDF


def test_real_pdf_reads_page_by_page_and_chunks_name_their_page():
    (doc,), stats = read(SPEC_PDF)
    assert (doc.source, doc.fmt, stats.by_format, stats.corrupt) == (str(SPEC_PDF), "pdf", {"pdf": 1}, 0)
    assert [s for _, s in doc.marks] == [f"page {n}" for n in range(1, 18)]  # 17 pages, all with text
    assert doc.text.startswith("Shared MIME-info Database\nX Desktop Group")
    assert 'The key words "MUST"' in doc.text[doc.marks[1][0] : doc.marks[2][0]]  # page 2's text
    chunks = chunk_document(doc.text, doc.fmt, ChunkConfig(), doc.marks)
    starts = [o for o, _ in doc.marks] + [len(doc.text)]
    for c in chunks:  # every chunk lies inside the page its section names
        n = int(c.section.removeprefix("page "))
        assert starts[n - 1] <= c.start < c.end <= starts[n] and doc.text[c.start : c.end] == c.text
    assert {c.section for c in chunks} == {f"page {n}" for n in range(1, 18)}
    hit = next(c for c in chunks if "glob-deleteall" in c.text)
    assert hit.section == "page 3"


def test_pages_without_text_are_counted_and_skipped(tmp_path):
    pdf = make_pdf(
        tmp_path / "mixed.pdf", ["Invoice 17\nTotal due: 40 EUR", None, "Page three says thanks.", None]
    )
    (doc,), stats = read(pdf)
    assert doc.marks == [(0, "page 1"), (len("Invoice 17\nTotal due: 40 EUR") + 2, "page 3")]
    assert "Total due: 40 EUR" in doc.text and doc.text.endswith("Page three says thanks.")
    assert stats.pdf_pages_without_text == 2 and stats.corrupt == 0
    assert stats.notes == [f"{pdf}: 2 of its 4 pages have no text (scanned? OCR it to read them): skipped"]

    docs, stats = read(make_pdf(tmp_path / "scan.pdf", [None, None]))
    assert docs == [] and stats.pdf_pages_without_text == 2 and "none of its pages has text" in stats.notes[0]


def test_a_real_pdf_without_a_text_layer_gives_no_document():
    mpl = pytest.importorskip("matplotlib")
    icon = Path(mpl.__file__).parent / MATPLOTLIB_ICON
    docs, stats = read(icon)
    assert docs == [] and (stats.files, stats.pdf_pages_without_text, stats.corrupt) == (1, 1, 0)


def test_corrupt_and_encrypted_pdfs_are_counted_with_a_note_never_a_traceback(tmp_path):
    from pypdf import PdfWriter

    plain = make_pdf(tmp_path / "plain.pdf", ["Quarterly figures, draft two."])
    (tmp_path / "truncated.pdf").write_bytes(SPEC_PDF.read_bytes()[:3000])
    (tmp_path / "junk.pdf").write_bytes(b"%PDF-1.7\n\x00\x01 not really a pdf")
    (tmp_path / "empty.pdf").write_bytes(b"")
    for name, user in (("locked.pdf", "secret"), ("owner-only.pdf", "")):
        w = PdfWriter(clone_from=plain)
        w.encrypt(user_password=user, owner_password="owner", algorithm="RC4-128")
        w.write(tmp_path / name)
    plain.unlink()
    stats = ReadStats()
    docs = list(iter_documents([tmp_path], stats=stats))
    # An owner-password-only PDF opens with the empty password, as in any viewer.
    assert [Path(d.source).name for d in docs] == ["owner-only.pdf"] and "Quarterly figures" in docs[0].text
    assert stats.files == 5 and stats.corrupt == 4
    notes = dict(n.split(": ", 1) for n in stats.notes)
    assert notes[str(tmp_path / "locked.pdf")] == "encrypted PDF (needs a password): skipped"
    for name in ("truncated.pdf", "junk.pdf", "empty.pdf"):
        assert notes[str(tmp_path / name)].startswith("not a readable PDF (")
    assert all("\n" not in n for n in stats.notes)


def test_a_long_pdf_is_cut_between_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_DOC_CHARS", 60)
    pdf = make_pdf(tmp_path / "long.pdf", [f"Page {n} " + "lorem ipsum " * 4 for n in range(1, 6)])
    docs, _ = read(pdf)
    assert [d.source for d in docs] == [f"{pdf}:{n}" for n in (1, 3, 5)]
    assert [[s for _, s in d.marks] for d in docs] == [["page 1", "page 2"], ["page 3", "page 4"], ["page 5"]]
    assert all(d.text[d.marks[0][0] :].startswith("Page") for d in docs)


# ---------------------------------------------------------------- DOCX


def test_real_docx_heading_is_the_section():
    (doc,), _ = read(FILES / "python-docx-test.docx")
    assert doc.text == "python-docx was here!\n\npython-docx was here too!"
    assert doc.marks == [(0, "python-docx was here!")]


def test_real_docx_tables_join_cells_and_list_a_merged_cell_once():
    (doc,), _ = read(FILES / "python-docx-tbl-cell-access.docx")
    tables = doc.text.split("\n\n")
    assert tables[0] == "1 | 2 | 3\n4 | 5 | 6\n7 | 8 | 9"
    assert tables[1] == "1 | 2 | 3\n4 | 6\n7 | 8 | 9"  # cells 4 and 5 are merged
    assert doc.marks == [(0, "")]  # no heading: no section


def make_docx(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.add_paragraph("Confidential draft.")
    d.add_heading("Travel policy", level=0)  # the Title style
    d.add_heading("Booking", level=1)
    d.add_paragraph("Book trains at least two weeks ahead.")
    d.add_heading("Rail", level=2)
    d.add_paragraph("First class only above four hours.")
    d.add_heading("Expenses", level=1)
    t = d.add_table(rows=2, cols=3)
    for cell, text in zip(
        t.rows[0].cells + t.rows[1].cells, ["Item", "Limit", "Receipt", "Hotel", "120 EUR", "yes"]
    ):
        cell.text = text
    d.add_paragraph("")  # empty paragraphs are left out
    d.add_paragraph("Claims go to finance within a month.")
    d.save(path)
    return path


def test_docx_headings_become_section_levels_and_tables_their_rows(tmp_path):
    (doc,), stats = read(make_docx(tmp_path / "policy.docx"))
    assert stats.by_format == {"docx": 1}
    text = doc.text
    assert "Item | Limit | Receipt\nHotel | 120 EUR | yes" in text
    sections = [s for _, s in doc.marks]
    assert sections == ["", "Travel policy", "Travel policy > Booking", "Travel policy > Booking > Rail",
                        "Travel policy > Expenses"]  # fmt: skip
    chunks = chunk_document(text, doc.fmt, ChunkConfig(max_chars=200, overlap=0), doc.marks)
    by_text = {c.text.splitlines()[-1]: c.section for c in chunks}
    assert by_text["First class only above four hours."] == "Travel policy > Booking > Rail"
    assert by_text["Claims go to finance within a month."] == "Travel policy > Expenses"
    assert any(c.section == "Travel policy > Expenses" and "Hotel | 120 EUR" in c.text for c in chunks)


def test_corrupt_docx_and_a_doc_renamed_docx_are_counted_and_skipped(tmp_path):
    good = make_docx(tmp_path / "good.docx")
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # the signature of an old .doc (and of an encrypted .docx)
    (tmp_path / "renamed.docx").write_bytes(ole + b"\x00" * 512)
    (tmp_path / "cut.docx").write_bytes(good.read_bytes()[:400])
    stats = ReadStats()
    docs = list(iter_documents([tmp_path], stats=stats))
    assert [Path(d.source).name for d in docs] == ["good.docx"]
    assert stats.corrupt == 2 and stats.binary == 0
    assert all(n.split(": ", 1)[1].startswith("not a readable DOCX (") for n in stats.notes)


def test_importing_the_readers_loads_neither_pdf_nor_docx_library():
    code = "import slmforge.data.readers, sys; sys.exit(bool({'pypdf', 'docx'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
