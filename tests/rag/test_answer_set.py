"""benchmarks/data/pydocs_answers.jsonl: the hand-written answer set passes its checker (schema, relevance
targets, no 5-gram copied from the Python docs), holds enough rows, and the checker catches bad rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"
DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def _checker():
    spec = importlib.util.spec_from_file_location("check_answer_set", DATA / "check_answer_set.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


check = _checker()

DOC = """json --- JSON encoder and decoder
================================

Basic Usage
-----------

.. function:: dumps(obj, *, indent=None)

   Serialize obj to a JSON formatted str using this conversion table.
"""
GOOD = {"id": "ans-000", "query": "How can I get a JSON string from a dict?",
        "answer": "Call json.dumps(obj).", "terms": ["dumps"],
        "relevant": [{"doc": "library/json.rst.txt", "section": "json --- JSON encoder and decoder > Basic Usage"}],
        "answerable": True, "split": "test"}  # fmt: skip
UNA = {"id": "una-000", "query": "Who won the 1998 World Cup?", "answer": "I don't know", "terms": [],
       "relevant": [], "answerable": False, "split": "test"}  # fmt: skip


@pytest.fixture
def docs(tmp_path):
    (tmp_path / "docs" / "library").mkdir(parents=True)
    (tmp_path / "docs" / "library" / "json.rst.txt").write_text(DOC, encoding="utf-8")
    return tmp_path / "docs"


def _run(tmp_path, docs, rows):
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return check.check(path, docs)[1]


@pytest.mark.skipif(not DOCS.is_dir(), reason="needs Debian python3.11-doc (/usr/share/doc/python3.11)")
def test_the_answer_set_passes_its_checker_and_is_big_enough():
    rows, problems = check.check(DATA / "pydocs_answers.jsonl", DOCS)
    assert problems == []
    answerable = [r for r in rows if r["answerable"]]
    assert len(answerable) >= 150
    assert len(rows) - len(answerable) >= 30
    assert len(check.modules(rows)) >= 50


def test_a_good_set_has_no_problems(tmp_path, docs):
    assert _run(tmp_path, docs, [GOOD, UNA]) == []


def test_a_question_copying_five_words_of_the_docs_is_reported(tmp_path, docs):
    copied = {**GOOD, "query": "How do I serialize obj to a JSON formatted str?"}
    problems = _run(tmp_path, docs, [copied])
    assert len(problems) == 1 and "obj to a json formatted" in problems[0]


def test_schema_problems_are_each_reported(tmp_path, docs):
    rows = [
        GOOD,
        {**GOOD, "query": "Another way to obtain a JSON string?"},  # duplicate id
        {**GOOD, "id": "ans-001", "terms": []},
        {**GOOD, "id": "ans-002", "relevant": [{"doc": "library/nope.rst.txt"}]},
        {**GOOD, "id": "ans-003", "relevant": [{"doc": "library/json.rst.txt", "section": "json > Basic"}]},
        {**GOOD, "id": "ans-004", "terms": ["loads"]},
        {**GOOD, "id": "ans-005", "split": "train"},
        {**UNA, "id": "una-001", "terms": ["x"]},
        {k: v for k, v in GOOD.items() if k != "answer"} | {"id": "ans-006"},
    ]
    problems = _run(tmp_path, docs, rows)
    expected = ["ans-000: duplicate id", "ans-001: needs 1-3", "ans-002: no doc library/nope.rst.txt",
                "ans-003: library/json.rst.txt has no section", "ans-004: the reference answer contains none",
                "ans-005: split must be", "una-001: unanswerable rows", "ans-006: field 'answer' missing"]  # fmt: skip
    for e in expected:
        assert any(p.startswith(e) for p in problems), (e, problems)
    assert len(problems) == len(expected)


def test_a_section_prefix_counts_but_a_partial_title_does_not(docs):
    found = check.sections(docs / "library" / "json.rst.txt")
    assert "json --- JSON encoder and decoder > Basic Usage > dumps" in found
    assert check.section_ok("json --- JSON encoder and decoder > Basic Usage", found)
    assert not check.section_ok("json --- JSON encoder and decoder > Basic", found)


def test_the_command_exits_non_zero_on_a_problem(tmp_path, docs, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**GOOD, "terms": []}) + "\nnot json\n", encoding="utf-8")
    assert check.main([str(path), "--docs", str(docs)]) == 1
    out = capsys.readouterr().out
    assert "line 2: not JSON" in out and "1 rows: 1 answerable" in out
    assert check.main([str(tmp_path / "bad.jsonl"), "--docs", str(tmp_path / "missing")]) == 2
