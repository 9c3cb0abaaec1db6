"""Entity-span data: the reader's one-line refusals, the exact-match span scores on hand-made cases, and
the hand-labelled sets in benchmarks/data/entities passing their checker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.core.errors import SlmError
from slmforge.data.entities import Span, read_entities, span_scores

ROOT = Path(__file__).resolve().parents[2]
SETS = ROOT / "benchmarks" / "data" / "entities"


def _write(tmp_path, rows, name="d.jsonl") -> str:
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(p)


def test_reads_spans_sorted(tmp_path):
    row = {"text": "Ada met Bob in Paris", "entities": [{"start": 15, "end": 20, "label": "LOC"},
                                                        {"start": 0, "end": 3, "label": "PER"}]}  # fmt: skip
    (rec,) = read_entities(_write(tmp_path, [row, ""]))
    assert rec.spans == [Span(0, 3, "PER"), Span(15, 20, "LOC")] and rec.line == 1


@pytest.mark.parametrize(
    "entities, message",
    [
        ([{"start": 5, "end": 40, "label": "PER"}], "outside the text"),
        ([{"start": 3, "end": 3, "label": "PER"}], "outside the text .* or empty"),
        ([{"start": -1, "end": 3, "label": "PER"}], "outside the text"),
        ([{"start": 0, "end": 7, "label": "PER"}, {"start": 4, "end": 9, "label": "ORG"}], "overlap"),
        ([{"start": 0, "end": 3, "label": "PLANET"}], "unknown label 'PLANET'"),
        ([{"start": 0, "end": 3, "label": "B-PER"}], "is not a name"),
        ([{"start": "0", "end": 3, "label": "PER"}], "must be integers"),
        ([{"start": 0, "end": 3}], "needs start, end and label"),
        ("PER", "no list of spans"),
    ],
)
def test_bad_spans_are_one_line_errors_naming_the_line(tmp_path, entities, message):
    path = _write(tmp_path, [{"text": "fine", "entities": []}, {"text": "Ada met Bob", "entities": entities}])
    with pytest.raises(SlmError, match=message) as e:
        read_entities(path, labels=["PER", "ORG", "LOC"])
    assert f"{path}:2" in str(e.value) and "\n" not in str(e.value)


def test_empty_file_bad_json_and_missing_file(tmp_path):
    with pytest.raises(SlmError, match="holds no examples"):
        read_entities(_write(tmp_path, ["", "  "]))
    with pytest.raises(SlmError, match=r":2 is not valid JSON"):
        read_entities(_write(tmp_path, [{"text": "a", "entities": []}, "{nope"]))
    with pytest.raises(SlmError, match="does not exist"):
        read_entities(str(tmp_path / "missing.jsonl"))
    with pytest.raises(SlmError, match="no text"):
        read_entities(_write(tmp_path, [{"sentence": "a", "entities": []}]))


def test_span_scores_exact_numbers():
    gold = [
        [Span(0, 3, "PER"), Span(8, 11, "PER"), Span(15, 20, "LOC")],
        [Span(0, 5, "ORG")],
        [],
    ]
    pred = [
        [Span(0, 3, "PER"), Span(8, 11, "ORG"), Span(15, 20, "LOC")],  # one wrong label
        [Span(0, 4, "ORG")],  # wrong offsets
        [],  # nothing to find, nothing found: an exact record
    ]
    s = span_scores(gold, pred)
    # tp 2 (PER 0-3, LOC), fp 2 (ORG 8-11, ORG 0-4), fn 2 (PER 8-11, ORG 0-5)
    assert s["micro"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "tp": 2, "fp": 2, "fn": 2}
    by = {r["label"]: r for r in s["per_label"]}
    assert by["PER"]["precision"] == 1.0 and by["PER"]["recall"] == 0.5 and by["PER"]["support"] == 2
    assert by["ORG"]["precision"] == 0.0 and by["ORG"]["support"] == 1 and by["ORG"]["fp"] == 2
    assert by["LOC"]["f1"] == 1.0
    assert s["exact_match"] == pytest.approx(1 / 3) and s["records"] == 3
    # restricted to the labels a baseline knows: ORG left out on both sides
    r = span_scores(gold, pred, labels=["PER", "LOC"])
    assert r["micro"]["tp"] == 2 and r["micro"]["fp"] == 0 and r["micro"]["fn"] == 1
    assert r["micro"]["f1"] == pytest.approx(0.8) and r["exact_match"] == pytest.approx(2 / 3)
    assert span_scores([[]], [[]])["micro"]["f1"] == 0.0  # no spans anywhere: nothing to score


def test_the_hand_labelled_sets_pass_their_checker():
    run = subprocess.run([sys.executable, str(SETS / "check_entities.py")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("0 problems")


def test_the_checker_finds_near_duplicates_and_bad_spans(tmp_path):
    sys.path.insert(0, str(SETS))
    try:
        import check_entities as ce
    finally:
        sys.path.remove(str(SETS))
    a = read_entities(_write(tmp_path, [{"text": "Ada Lovelace moved to Paris in May.", "entities": [
        {"start": 0, "end": 12, "label": "PERSON"}, {"start": 22, "end": 27, "label": "LOCATION"},
        {"start": 31, "end": 34, "label": "DATE"}]}], "a.jsonl"))[0]  # fmt: skip
    b = read_entities(_write(tmp_path, [{"text": "Kofi Annan moved to Accra in June.", "entities": [
        {"start": 0, "end": 10, "label": "PERSON"}, {"start": 20, "end": 25, "label": "LOCATION"},
        {"start": 29, "end": 33, "label": "DATE"}]}], "b.jsonl"))[0]  # fmt: skip
    ga, gb = ce.trigrams(ce.masked(a.text, a.spans)), ce.trigrams(ce.masked(b.text, b.spans))
    assert ga == gb  # only the names differ: the same sentence
    bad = _write(tmp_path, [{"text": "the Hague", "entities": [{"start": 0, "end": 9, "label": "LOCATION"}]}],
                 "train.jsonl")  # fmt: skip
    problems, _ = ce.check_file(Path(bad), ["LOCATION"])
    assert any("leading 'the'" in p for p in problems) and any("fewer than 320" in p for p in problems)
