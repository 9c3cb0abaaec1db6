"""`slm data ingest`: outputs, counts, dedup, PII, a stable split, bad input, bounded memory."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.data.dedup import Deduper
from slmforge.data.ingest import IngestConfig, ingest, is_val

VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "ze") for b in range(40)]


def words(seed: int, n: int = 120) -> str:
    """A distinct pseudo-document: n words in sentences of 12, lines of 2 sentences."""
    rng = random.Random(seed)
    w = [rng.choice(VOCAB) for _ in range(n)]
    sentences = [" ".join(w[i : i + 12]).capitalize() + "." for i in range(0, n, 12)]
    return "\n".join(" ".join(sentences[i : i + 2]) for i in range(0, len(sentences), 2))


def corpus(root: Path, n: int, start: int = 0) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    docs = {}
    for i in range(start, start + n):
        docs[f"doc{i:03d}.txt"] = words(i)
        (root / f"doc{i:03d}.txt").write_text(docs[f"doc{i:03d}.txt"])
    return docs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ingest_writes_split_dataset_stats_and_registers(tmp_path):
    src = tmp_path / "src"
    corpus(src, 40)
    (src / "sub").mkdir()
    (src / "sub" / "page.html").write_text(
        f"<html><body><nav>menu</nav><h1>Title</h1><p>{words(1000)}</p></body></html>"
    )
    (src / "sub" / "recs.jsonl").write_text(json.dumps({"text": words(1001)}) + "\n{broken\n")
    (src / "sub" / "rows.csv").write_text(f'text\n"{words(1002)}"\n')
    (src / "tiny.md").write_text("too short")
    out = tmp_path / "ds"
    stats = ingest(IngestConfig([str(src)], str(out), val_fraction=0.2), progress=False)

    assert sorted(p.name for p in out.iterdir()) == [
        "slmforge.json",
        "stats.json",
        "train.jsonl",
        "val.jsonl",
    ]
    train, val = read_jsonl(out / "train.jsonl"), read_jsonl(out / "val.jsonl")
    assert len(train) + len(val) == 43 and train and val
    assert all(set(r) == {"id", "source", "text"} and len(r["id"]) == 16 for r in train + val)
    html = next(r for r in train + val if r["source"].endswith("page.html"))
    assert html["text"].startswith("Title\n\n") and "menu" not in html["text"]
    assert any(r["source"].endswith("recs.jsonl:1") for r in train + val)

    assert stats == json.loads((out / "stats.json").read_text())
    assert stats["files"] == 44 and stats["documents_read"] == 44
    assert stats["skipped"] == {
        "binary_files": 0,
        "non_utf8_files": 0,
        "unsupported_files": 0,
        "malformed_records": 1,
        "corrupt_or_encrypted_files": 0,
        "pdf_pages_without_text": 0,
        "too_short": 1,
    }
    assert (stats["train_docs"], stats["val_docs"]) == (len(train), len(val))
    assert stats["train_chars"] == sum(len(r["text"]) for r in train)
    assert stats["train_bytes"] == (out / "train.jsonl").stat().st_size
    assert stats["formats"] == {"csv": 1, "html": 1, "jsonl": 1, "md": 1, "txt": 40}

    (art,) = workspace.list_artifacts("dataset")
    assert art.path == str(out.resolve()) and art.data_hash == stats["data_hash"]
    assert art.metrics["train_docs"] == len(train)
    assert workspace.read_manifest(out)["kind"] == "dataset"


def test_exact_and_near_duplicates_are_removed_and_counted(tmp_path):
    src = tmp_path / "src"
    docs = corpus(src, 12)
    docs["long.txt"] = words(77, 400)
    (src / "long.txt").write_text(docs["long.txt"])
    edited = docs["long.txt"].split(" ")
    for i in (5, 140, 290):  # change a few words
        edited[i] = "changed"
    (src / "near.txt").write_text(" ".join(edited))
    (src / "exact.md").write_text("  " + docs["doc007.txt"].replace(" ", "  ") + "\n\n\n")
    (src / "exact.jsonl").write_text(json.dumps({"text": docs["doc001.txt"]}) + "\n")
    stats = ingest(IngestConfig([str(src)], str(tmp_path / "ds"), val_fraction=0.0), progress=False)
    assert (stats["exact_duplicates"], stats["near_duplicates"]) == (2, 1)
    assert stats["train_docs"] == 13 and stats["val_docs"] == 0
    kept = {r["source"].rsplit("/", 1)[1] for r in read_jsonl(tmp_path / "ds" / "train.jsonl")}
    assert kept == set(docs)  # the first copy (sorted order) wins

    # A strict threshold keeps the edited copy.
    stats = ingest(
        IngestConfig([str(src)], str(tmp_path / "ds2"), val_fraction=0.0, near_dup_threshold=1.0), False
    )
    assert stats["near_duplicates"] == 0 and stats["train_docs"] == 14


def test_deduper_keeps_distinct_documents(tmp_path):
    with Deduper(tmp_path / "d.sqlite") as d:
        assert [d.check(words(i, 80)) for i in range(30)] == [None] * 30
        assert d.check(words(4, 80)) == "exact"
        assert d.check(words(4, 80).upper()) == "near"  # case-folded shingles
    assert not (tmp_path / "d.sqlite").exists()


def test_split_is_deterministic_and_independent_of_order_and_other_docs(tmp_path):
    a = tmp_path / "a"
    corpus(a, 60)
    s1 = ingest(IngestConfig([str(a)], str(tmp_path / "o1"), val_fraction=0.25), progress=False)
    s2 = ingest(IngestConfig([str(a)], str(tmp_path / "o2"), val_fraction=0.25), progress=False)
    assert s1["data_hash"] == s2["data_hash"]
    assert (tmp_path / "o1" / "val.jsonl").read_bytes() == (tmp_path / "o2" / "val.jsonl").read_bytes()
    val1 = {r["id"] for r in read_jsonl(tmp_path / "o1" / "val.jsonl")}
    assert 5 <= len(val1) <= 25

    # Same documents under other names (reverse order) plus 30 new ones: old docs keep their side.
    b = tmp_path / "b"
    b.mkdir()
    for i, f in enumerate(sorted(a.iterdir(), reverse=True)):
        (b / f"x{i:03d}.txt").write_text(f.read_text())
    corpus(b / "more", 30, start=500)
    ingest(IngestConfig([str(b)], str(tmp_path / "o3"), val_fraction=0.25), progress=False)
    val3 = {r["id"] for r in read_jsonl(tmp_path / "o3" / "val.jsonl")}
    train3 = {r["id"] for r in read_jsonl(tmp_path / "o3" / "train.jsonl")}
    old = val1 | {r["id"] for r in read_jsonl(tmp_path / "o1" / "train.jsonl")}
    assert val3 & old == val1 and not (train3 & val1)

    # Another seed gives another split.
    ingest(IngestConfig([str(a)], str(tmp_path / "o4"), val_fraction=0.25, seed=1), progress=False)
    assert {r["id"] for r in read_jsonl(tmp_path / "o4" / "val.jsonl")} != val1
    assert not is_val("0" * 40, 0, 0.0) and is_val("0" * 40, 0, 0.999999)


def test_redact_pii_in_output_and_stats(tmp_path):
    src = tmp_path / "src"
    corpus(src, 6)
    (src / "contact.txt").write_text(
        words(99, 30) + "\nWrite to jane.doe@example.com or call +1 (415) 555-2671.\n"
        "Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00. Python 3.11.7 is fine."
    )
    stats = ingest(
        IngestConfig([str(src)], str(tmp_path / "ds"), redact_pii=True, val_fraction=0), progress=False
    )
    assert stats["pii"] == {"email": 1, "phone": 1, "card": 1, "iban": 1}
    (rec,) = [r for r in read_jsonl(tmp_path / "ds" / "train.jsonl") if r["source"].endswith("contact.txt")]
    assert rec["text"].endswith(
        "Write to [EMAIL] or call [PHONE].\nCard [CARD], IBAN [IBAN]. Python 3.11.7 is fine."
    )
    assert "example.com" not in (tmp_path / "ds" / "train.jsonl").read_text()


def test_binary_and_latin1_files_skipped_with_counts(tmp_path):
    src = tmp_path / "src"
    corpus(src, 5)
    (src / "latin.txt").write_bytes(("caf\xe9 " * 20).encode("latin-1"))
    (src / "blob.md").write_bytes(b"\x00\x01" * 50)
    (src / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    stats = ingest(IngestConfig([str(src)], str(tmp_path / "ds"), val_fraction=0), progress=False)
    assert stats["skipped"]["binary_files"] == 1
    assert stats["skipped"]["non_utf8_files"] == 1
    assert stats["skipped"]["unsupported_files"] == 1
    assert stats["train_docs"] == 5


@pytest.mark.parametrize(
    ("setup", "cfg", "message"),
    [
        (lambda d: None, {"paths": ["missing"]}, "path not found: .*missing"),
        (
            lambda d: (d / "empty").mkdir(),
            {"paths": ["empty"]},
            r"no readable documents under .*empty \(no files",
        ),
        (
            lambda d: (
                (d / "e").mkdir(),
                (d / "e" / "a.txt").write_text(""),
                (d / "e" / "b.md").write_text("hi"),
            ),
            {"paths": ["e"]},
            "no documents left under e: 2 read, 2 shorter than --min-chars 20, 0 duplicates",
        ),
        (
            lambda d: ((d / "bin").mkdir(), (d / "bin" / "a.txt").write_bytes(b"\x00" * 9)),
            {"paths": ["bin"]},
            r"no readable documents under .*bin \(1 binary files\)",
        ),
        (
            lambda d: corpus(d / "few", 1),
            {"paths": ["few"], "val_fraction": 0.05},
            "corpus too small for a val split: 1 document gave 0 for (training|validation) at --val-fraction 0.05",
        ),
        (
            lambda d: corpus(d / "c", 2),
            {"paths": ["c"], "val_fraction": 1.5},
            r"--val-fraction must be in \[0, 1\)",
        ),
        (
            lambda d: (
                (d / "j").mkdir(),
                (d / "j" / "a.jsonl").write_text('{"body": "some long enough text"}\n'),
            ),
            {"paths": ["j"]},
            "1 jsonl records without field 'text'",
        ),
    ],
)
def test_bad_input_raises_one_line_error_and_writes_nothing(tmp_path, monkeypatch, setup, cfg, message):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SlmError, match=message) as exc:
        ingest(IngestConfig(out="ds", **cfg), progress=False)
    assert "\n" not in str(exc.value)
    assert sorted(os.listdir(tmp_path)) == before  # no out dir, no temp leftovers
    assert workspace.list_artifacts("dataset") == []


def test_existing_out_needs_overwrite(tmp_path):
    corpus(tmp_path / "src", 4)
    out = tmp_path / "ds"
    ingest(IngestConfig([str(tmp_path / "src")], str(out), val_fraction=0), progress=False)
    with pytest.raises(SlmError, match="already exists"):
        ingest(IngestConfig([str(tmp_path / "src")], str(out), val_fraction=0), progress=False)
    corpus(tmp_path / "src", 2, start=10)
    stats = ingest(
        IngestConfig([str(tmp_path / "src")], str(out), val_fraction=0, overwrite=True), progress=False
    )
    assert stats["train_docs"] == 6 and len(read_jsonl(out / "train.jsonl")) == 6


def test_out_inside_input_is_not_read_back(tmp_path):
    corpus(tmp_path, 4)
    ingest(IngestConfig([str(tmp_path)], str(tmp_path / "ds"), val_fraction=0), progress=False)
    stats = ingest(IngestConfig([str(tmp_path)], str(tmp_path / "ds"), val_fraction=0, overwrite=True), False)
    assert stats["files"] == 4 and stats["exact_duplicates"] == 0


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `slm ...` in-process through slmforge.cli.main (its exit-code and error handling)."""
    from slmforge import cli

    monkeypatch.setattr(sys, "argv", ["slm", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_success_prints_table(tmp_path, monkeypatch, capsys):
    corpus(tmp_path / "src", 30)
    code, out, err = run_cli(
        monkeypatch, capsys, "data", "ingest", str(tmp_path / "src"), "-o", str(tmp_path / "ds"),
        "--val-fraction", "0.2", "--min-chars", "5", "--seed", "3", "--redact-pii",
    )  # fmt: skip
    assert code == 0, err
    assert "documents read" in out and "30" in out and "pii redacted" in out
    stats = json.loads((tmp_path / "ds" / "stats.json").read_text())
    assert (
        stats["config"]["seed"] == 3 and stats["config"]["min_chars"] == 5 and stats["config"]["redact_pii"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "error: path not found: nope"),
        (["rows.csv", "--text-column", "body"], "error: rows.csv: no column 'body' (columns: 'id', 'text')"),
        (["few"], "error: corpus too small for a val split: 1 document gave 0 for"),
    ],
)
def test_cli_errors_are_one_line_nonzero_and_leave_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.csv").write_text(f'id,text\n1,"{words(1)}"\n')
    corpus(tmp_path / "few", 1)
    before = sorted(os.listdir(tmp_path))
    code, out, err = run_cli(monkeypatch, capsys, "data", "ingest", *args, "--out", "ds")
    assert code != 0
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_subprocess_error(tmp_path):
    env = {**os.environ, "SLMFORGE_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "slmforge.cli", "data", "ingest"]
    r = subprocess.run([*cmd, str(tmp_path / "missing"), "--out", str(tmp_path / "ds")], capture_output=True,
                       text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: path not found: {tmp_path / 'missing'}"]
    assert r.stdout == "" and not (tmp_path / "ds").exists()


_MEMORY_CHILD = textwrap.dedent(
    """
    import resource, sys
    from slmforge.data.ingest import IngestConfig, ingest
    stats = ingest(IngestConfig([sys.argv[1]], sys.argv[2], val_fraction=0.05), progress=False)
    assert stats["train_docs"] + stats["val_docs"] == int(sys.argv[3]), stats
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
    """
)


def _hex_corpus(root: Path, n_docs: int, doc_bytes: int = 20_000) -> int:
    """n_docs distinct documents of random hex words: half as .txt files, half in one .jsonl."""
    root.mkdir()
    total = 0
    with open(root / "docs.jsonl", "w") as jl:
        for i in range(n_docs):
            raw = os.urandom(doc_bytes // 2).hex()
            text = "\n".join(
                " ".join(raw[j : j + 12] for j in range(k, k + 120, 12)) for k in range(0, len(raw), 120)
            )
            total += len(text)
            if i % 2:
                jl.write(json.dumps({"text": text}) + "\n")
            else:
                (root / f"d{i:05d}.txt").write_text(text)
    return total


def _peak_rss_kib(tmp_path: Path, name: str, n_docs: int) -> tuple[int, int]:
    size = _hex_corpus(tmp_path / name, n_docs)
    r = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(tmp_path / name), str(tmp_path / f"{name}_ds"), str(n_docs)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SLMFORGE_HOME": str(tmp_path / "h")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1]), size


def test_memory_stays_flat_as_the_corpus_grows(tmp_path):
    """Peak RSS of a 43 MB ingest stays within a 6 MiB cap of a 2 MB one's: the extra corpus is 6x the cap.

    Holding the texts (or a per-document Python object of even 3 KiB) would blow the cap.
    """
    cap_kib = 6 * 1024
    small_rss, small_size = _peak_rss_kib(tmp_path, "small", 100)
    large_rss, large_size = _peak_rss_kib(tmp_path, "large", 2000)
    assert large_size - small_size > 5 * cap_kib * 1024
    assert large_rss - small_rss < cap_kib, (small_rss, large_rss)
