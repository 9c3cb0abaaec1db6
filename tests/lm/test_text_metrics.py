"""Generation metrics of `slm eval`: EM, token F1 and ROUGE-L by hand, chrF against sacrebleu itself, and
the new columns in the eval table and report."""

from __future__ import annotations

import json

import pytest
from sacrebleu.metrics import CHRF

from slmforge.lm.text_metrics import chrf, corpus_chrf, exact_match, rouge_l, score_generation, token_f1


def test_exact_match_normalises_case_and_whitespace():
    assert exact_match("  Card \n Arrival ", "card arrival") == 1.0
    assert exact_match("card", "card arrival") == 0.0
    assert exact_match("", "") == 1.0


def test_token_f1_by_hand():
    assert token_f1("the cat sat", "the cat sat down") == pytest.approx(2 * 1 * 0.75 / 1.75)  # P 3/3, R 3/4
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # multiset overlap {a, b}: P = R = 2/3
    assert token_f1("x y", "a b") == 0.0
    assert token_f1("", "a") == 0.0 and token_f1(" ", "") == 1.0


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        ("the cat sat on the mat", "the cat was on the mat", 5 / 6),  # LCS 5 of 6 each side
        ("a b c d", "a c e", 4 / 7),  # LCS "a c": P 2/4, R 2/3, F 4/7
        # a man-page pair: LCS "list contents" (or "list directory") = 2; P 2/3, R 2/6, F = 2PR/(P+R) = 4/9
        ("list directory contents", "list the contents of a directory", 4 / 9),
        ("copy files", "copy files and directories", 2 / 3),  # P 1, R 1/2
        ("a b c", "c b a", 1 / 3),  # order matters: LCS 1, P = R = 1/3
        ("a a b", "a b a b", 6 / 7),  # LCS "a a b" = 3: P 1, R 3/4
        ("List  Directory", "list directory", 1.0),  # lowercased, whitespace collapsed
        ("b a", "c", 0.0),
        ("", "", 1.0),
        ("", "x", 0.0),
    ],
)
def test_rouge_l_by_hand(pred, ref, expected):
    assert rouge_l(pred, ref) == pytest.approx(expected)


PAIRS = [
    ("list directory contents", "list directory contents"),
    ("list the files in a directory", "list directory contents"),
    ("ab", "abc"),
    ("a b", "ab"),
    ("ab", "AB"),
    ("open and possibly create a file", "open a file or create it"),
    ("x", "a much longer reference sentence"),
    ("", "x"),
    ("", ""),
]


@pytest.mark.parametrize(("pred", "ref"), PAIRS)
def test_sentence_chrf_is_sacrebleu_s(pred, ref):
    assert chrf(pred, ref) == pytest.approx(CHRF().sentence_score(pred, [ref]).score / 100)


def test_chrf_known_values_and_corpus_against_sacrebleu():
    # sacrebleu averages P and R over orders first: "ab" vs "abc": P 1, R (2/3 + 1/2)/2 = 7/12,
    # F2 = 5 * 7/12 / (4 + 7/12) = 7/11 (not the mean of per-order F, (5/7 + 5/9)/2)
    assert chrf("ab", "abc") == pytest.approx(7 / 11)
    assert chrf("a b", "ab") == 1.0 and chrf("ab", "AB") == 0.0  # whitespace ignored, case kept
    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    expected = CHRF().corpus_score(preds, [refs]).score / 100
    assert corpus_chrf(preds, refs) == pytest.approx(expected)
    mean = sum(chrf(p, r) for p, r in PAIRS) / len(PAIRS)
    assert abs(corpus_chrf(preds, refs) - mean) > 0.01  # the two numbers differ: both are reported
    assert corpus_chrf([], []) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        corpus_chrf(["a", "b"], ["a"])


def test_score_generation_keys():
    s = score_generation("list directory contents", "list directory contents")
    assert s == {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0, "chrf": 1.0}


def test_eval_table_and_report_hold_rouge_l_and_both_chrf(slm_cli, tiny_model_dir, tmp_path):
    rows = [
        {"prompt": "Write the one-line NAME summary.\n\nPage: ls (1)\n\nList the files.", "completion": "list files"},
        {"prompt": "Write the one-line NAME summary.\n\nPage: cp (1)\n\nCopy files.", "completion": "copy files"},
        {"prompt": "Write the one-line NAME summary.\n\nPage: rm (1)\n\nRemove files.", "completion": "remove"},
    ]  # fmt: skip
    data, shots = tmp_path / "test.jsonl", tmp_path / "shots.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shots.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    out = tmp_path / "report"
    code, stdout, err = slm_cli(
        "eval", tiny_model_dir, f"{tiny_model_dir}@2shot", "--task", "generation", "--data", data,
        "--shots-from", shots, "--max-new-tokens", "8", "--threads", "1", "--no-isolate", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    for header in ("EM", "F1", "ROUGE-L", "chrF", "chrF corpus", "p50 s", "p95 s"):
        assert header in stdout, stdout
    md = (out / "eval.md").read_text()
    assert "| ROUGE-L | chrF | chrF corpus |" in md and "sacrebleu" in md
    report = json.loads((out / "eval.json").read_text())
    assert [r["shots"] for r in report["rows"]] == [0, 2]  # two rows side by side in one table
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6
    for i, row in enumerate(report["rows"]):
        mine = preds[3 * i : 3 * i + 3]  # written in row order
        texts, refs = [p["prediction"] for p in mine], [p["reference"] for p in mine]
        assert row["chrf_corpus"] == pytest.approx(CHRF().corpus_score(texts, [refs]).score / 100)
        assert row["chrf"] == pytest.approx(
            sum(CHRF().sentence_score(t, [r]).score for t, r in zip(texts, refs)) / 300
        )
        assert row["rouge_l"] == pytest.approx(sum(rouge_l(t, r) for t, r in zip(texts, refs)) / 3)
        assert f"{row['chrf_corpus']:.3f}" in md
