"""Readers: every format, sorted recursive order, HTML cleaned, bad files skipped with counts."""

from __future__ import annotations

import json

import pytest

from slmforge.core.errors import SlmError
from slmforge.data import readers
from slmforge.data.clean import normalize
from slmforge.data.readers import ReadStats, file_format, html_to_text, iter_documents

HTML = """<!doctype html><html><head><title>T</title><style>p {color: red}</style>
<script>var secret = "do not keep";</script></head>
<body><nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
<div role="navigation"><ul><li>sidebar link</li></ul></div>
<h1>Install &amp; run</h1>
<p>First   paragraph
   spans lines.</p><p>Second <b>bold</b> paragraph.<br>New line.</p>
<h2>Steps</h2><ul><li>one</li><li>two</li></ul>
<pre>def f(x):
    return x  # kept</pre>
<footer>(c) footer</footer></body></html>"""


def test_formats_recursive_sorted_and_hidden_skipped(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("# Title\n\nmarkdown body")
    (tmp_path / "b" / "guide.rst.txt").write_text("Guide\n=====\n\nrst body")
    (tmp_path / "a.txt").write_text("plain text\nsecond line")
    (tmp_path / "c.rst").write_text("rst")
    (tmp_path / "d.html").write_text("<p>html</p>")
    (tmp_path / "e.jsonl").write_text('{"text": "j1"}\n{"text": "j2"}\n')
    (tmp_path / "f.csv").write_text('id,text\n1,c1\n2,"c2, quoted"\n')
    (tmp_path / ".hidden.txt").write_text("hidden")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("hidden dir")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    stats = ReadStats()
    docs = list(iter_documents([tmp_path], stats=stats))
    got = [(d.source.replace(str(tmp_path) + "/", ""), d.text, d.fmt) for d in docs]
    assert got == [
        ("a.txt", "plain text\nsecond line", "txt"),
        ("b/guide.rst.txt", "Guide\n=====\n\nrst body", "rst"),
        ("b/z.md", "# Title\n\nmarkdown body", "md"),
        ("c.rst", "rst", "rst"),
        ("d.html", "html", "html"),
        ("e.jsonl:1", "j1", "jsonl"),
        ("e.jsonl:2", "j2", "jsonl"),
        ("f.csv:1", "c1", "csv"),
        ("f.csv:2", "c2, quoted", "csv"),
    ]
    assert stats.files == 7 and stats.unsupported == 1 and stats.documents == 9
    assert stats.by_format == {"txt": 1, "rst": 2, "md": 1, "html": 1, "jsonl": 2, "csv": 2}


def test_file_format_suffixes():
    assert file_format("x/library/os.rst.txt") == "rst"
    assert file_format("README.md.txt") == "md"
    assert file_format("notes.TXT") == "txt"
    assert file_format("page.htm") == "html"
    assert file_format("data.ndjson") == "jsonl"
    assert file_format("model.bin") is None


def test_html_to_clean_text():
    text = html_to_text(HTML)
    assert text == (
        "Install & run\n\n"
        "First paragraph spans lines.\n\n"
        "Second bold paragraph.\nNew line.\n\n"
        "Steps\n\n"
        "- one\n- two\n\n"
        "def f(x):\n    return x  # kept\n\n"
        "(c) footer"
    )
    for dropped in ("secret", "color", "Home", "sidebar", "T\n"):
        assert dropped not in text


def test_binary_and_non_utf8_files_are_skipped_and_counted(tmp_path):
    (tmp_path / "good.txt").write_text("héllo wörld, valid UTF-8", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    (tmp_path / "blob.txt").write_bytes(b"text then \x00\x01\x02 binary")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "\xff\xfe"}\n')
    stats = ReadStats()
    docs = list(iter_documents([tmp_path], stats=stats))
    assert [d.text for d in docs] == ["héllo wörld, valid UTF-8"]
    assert (stats.binary, stats.non_utf8, stats.files, stats.documents) == (1, 2, 4, 1)


def test_jsonl_field_and_malformed_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"body": "first", "text": "ignored"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"other": "no body"}),
        json.dumps({"body": 42}),
        "",
        json.dumps({"body": "second"}),
    ]
    p.write_text("\n".join(lines) + "\n")
    stats = ReadStats()
    docs = list(iter_documents([p], text_field="body", stats=stats))
    assert [(d.source.rsplit(":", 1)[1], d.text) for d in docs] == [("1", "first"), ("7", "second")]
    assert stats.malformed == 4 and stats.missing_field == 1


def test_csv_column_option_and_missing_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('title,content\nA,alpha text\nB,"multi\nline"\n')
    assert [d.text for d in iter_documents([p], text_column="content")] == ["alpha text", "multi\nline"]
    with pytest.raises(SlmError, match=r"no column 'text' \(columns: 'title', 'content'\)"):
        list(iter_documents([p]))


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(SlmError, match="path not found: .*nope"):
        list(iter_documents([tmp_path / "nope"]))


def test_explicit_files_deduplicated_and_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    docs = list(iter_documents([tmp_path / "b.txt", tmp_path, tmp_path / "a.txt"]))
    assert sorted(d.text for d in docs) == ["ay", "bee"] and len(docs) == 2


def test_large_text_file_is_cut_at_paragraphs(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_DOC_CHARS", 100)
    paras = [f"paragraph {i} " + "word " * 12 for i in range(6)]
    (tmp_path / "big.txt").write_text("\n\n".join(p.strip() for p in paras) + "\n")
    docs = list(iter_documents([tmp_path]))
    assert len(docs) > 1
    assert all(d.source.startswith(str(tmp_path / "big.txt") + ":") for d in docs)
    assert docs[0].source.endswith(":1")
    # Nothing lost, nothing split inside a paragraph.
    assert normalize("\n\n".join(d.text for d in docs)) == "\n\n".join(p.strip() for p in paras)


def test_large_html_file_is_streamed_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_DOC_CHARS", 200)
    monkeypatch.setattr(readers, "_CHUNK", 256)
    body = "".join(f"<p>paragraph {i} with some words</p>" for i in range(60))
    (tmp_path / "big.html").write_text(f"<html><body>{body}</body></html>")
    docs = list(iter_documents([tmp_path]))
    assert len(docs) > 1
    joined = "\n\n".join(d.text for d in docs)
    assert joined == "\n\n".join(f"paragraph {i} with some words" for i in range(60))


def test_normalize_keeps_structure():
    raw = "\ufeff\n\n  Title\u00a0 here \r\n\tcode\tline\n\n\n\n\nnext  para\x07\u200b end  \n  \n"
    assert normalize(raw) == "  Title here\n    code line\n\nnext para end"
    assert normalize("e\u0301") == "\u00e9"  # NFC
    assert normalize("a\u2028b\rc\x0cd") == "a\nb\nc\nd"
