"""PDF and DOCX through `slm data ingest`, `slm rag index` and `slm rag search`: a real PDF (see
tests/data/files/README.md), a DOCX with headings, a corrupt PDF and a scanned one; hits name page / heading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmforge.rag.stores import open_store
from tests.data.test_office import SPEC_PDF, make_docx, make_pdf


@pytest.fixture
def office_dir(tmp_path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SPEC_PDF, docs / "mime-spec.pdf")
    make_docx(docs / "policy.docx")
    make_pdf(docs / "scan.pdf", [None, None, None])
    (docs / "broken.pdf").write_bytes(SPEC_PDF.read_bytes()[:3000])
    return docs


def test_cli_ingest_index_and_search_keep_the_page_and_heading(office_dir, tmp_path, slm_cli):
    code, out, err = slm_cli(
        "data", "ingest", str(office_dir), "-o", str(tmp_path / "ds"), "--val-fraction", "0"
    )
    assert code == 0, err
    assert "1 corrupt or encrypted files" in out and "3 pdf pages without text" in out
    assert f"{office_dir / 'broken.pdf'}: not a readable PDF (" in err  # one line each, above the bar
    assert f"{office_dir / 'scan.pdf'}: none of its pages has text" in err and "Traceback" not in err
    rows = [json.loads(line) for line in (tmp_path / "ds" / "train.jsonl").read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in rows) == ["mime-spec.pdf", "policy.docx"]

    code, out, err = slm_cli(
        "rag", "index", str(office_dir), "--index", "kb", "--runtime", "torch", "--threads", "1"
    )
    assert code == 0, err
    assert "4 seen: 3 indexed" in out  # the broken PDF is not recorded, so the next run reads it again
    assert "1 empty, 1 corrupt or encrypted, 3 pdf pages without text" in out
    assert f"{office_dir / 'broken.pdf'}: not a readable PDF (" in err
    sections: dict[str, set[str]] = {}
    store = open_store("kb")
    try:
        for c in store.chunks_to_check(0, 10_000, every=True):
            sections.setdefault(Path(c.path).name, set()).add(c.section)
    finally:
        store.close()
    assert sections["mime-spec.pdf"] == {f"page {n}" for n in range(1, 18)}
    assert {"Travel policy > Booking > Rail", "Travel policy > Expenses"} <= sections["policy.docx"]

    code, out, err = slm_cli(
        "rag", "search", "kb", "glob-deleteall overwrite mimetype definition", "--k", "1"
    )
    assert code == 0, err
    assert "mime-spec.pdf" in out and "page 3" in out
    code, out, err = slm_cli("rag", "search", "kb", "first class rail travel over four hours", "--k", "1")
    assert code == 0, err
    assert "policy.docx" in out and "Rail" in out
