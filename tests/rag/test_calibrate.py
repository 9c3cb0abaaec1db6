"""rag calibrate: the split, the fit, what is stored and who reads it, bad input. Real MiniLM, 60 chunks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmforge.core.errors import SlmError
from slmforge.rag.calibrate import PASS, CalibrateConfig, calibrate, gate_threshold, group_key, split
from slmforge.rag.evaluate import RagEvalConfig, evaluate_rag, load_queries, score_ranking
from slmforge.rag.index import build_index
from slmforge.rag.search import ALPHA, CALIBRATION_KEY, Retriever, read_calibration
from tests.rag.calib_corpus import eval_rows, synth_rows, write_corpus, write_jsonl
from tests.rag.test_index_search import index_cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """30 manuals indexed once (SQLite, torch MiniLM), their synth and eval question files."""
    root = tmp_path_factory.mktemp("calib")
    docs, facts = write_corpus(root)
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before the per-test workspace exists
        mp.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome_calib")))
        build_index(index_cfg(docs, root / "kb.sqlite"), progress=False)
    qa = write_jsonl(root / "qa.jsonl", synth_rows(facts))
    queries = write_jsonl(root / "queries.jsonl", eval_rows(facts))
    return root / "kb.sqlite", qa, queries, facts


@pytest.fixture
def kb(corpus, tmp_path):
    """A fresh copy of the index (tests store calibrations in it)."""
    index, qa, queries, facts = corpus
    copy = tmp_path / "kb.sqlite"
    shutil.copy(index, copy)
    return copy, qa, queries, facts


def test_split_holds_whole_documents_apart_deterministically(corpus):
    _, qa, queries, _ = corpus
    rows = load_queries(str(qa))
    fit, held = split(rows, 0.3, seed=0)
    assert len(fit) + len(held) == len(rows) and len(held) >= 0.3 * len(rows)
    assert len(held) < 0.3 * len(rows) + 3  # a manual's questions (2 or 3) go together
    assert not {group_key(q) for q in fit} & {group_key(q) for q in held}
    again = split(load_queries(str(qa)), 0.3, seed=0)
    assert [q["query"] for q in again[1]] == [q["query"] for q in held]
    assert [q["query"] for q in split(rows, 0.3, seed=1)[1]] != [q["query"] for q in held]
    # the eval format groups by the first relevant document; a query with none is its own group
    eval_q = load_queries(str(queries))
    assert group_key(eval_q[0]) == group_key(eval_q[1]) != group_key(eval_q[2])
    assert group_key(eval_q[-1]).startswith("query:")


def test_gate_threshold_is_the_highest_that_lets_98_percent_through():
    cosines = [0.30 + i / 1000 for i in range(100)]  # 0.300 .. 0.399
    t = gate_threshold(cosines)
    assert t == pytest.approx(0.302)  # the two lowest may fail
    assert sum(c >= t for c in cosines) / len(cosines) >= PASS
    assert sum(c >= t + 0.001 for c in cosines) / len(cosines) < PASS
    assert gate_threshold([0.5] * 10) == 0.5


def test_calibrate_fits_on_some_documents_reports_on_others_and_stores(kb, tmp_path):
    index, qa, _, _ = kb
    report_path = tmp_path / "calibration.json"
    rep = calibrate(CalibrateConfig(str(index), str(qa), report=str(report_path)), progress=False)
    assert json.loads(report_path.read_text())["chosen"] == rep["chosen"]
    assert rep["questions"]["fit"]["answerable"] == 40 and rep["questions"]["held"]["answerable"] == 20
    grid = rep["fit"]["grid"]
    assert [g["alpha"] for g in grid if g["fusion"] == "convex"] == [i / 10 for i in range(11)]
    assert any(g["fusion"] == "rrf" for g in grid)
    ch = rep["chosen"]
    top = max((g["recall@5"], g["mrr"]) for g in grid)
    assert (
        next(
            (g["recall@5"], g["mrr"])
            for g in grid
            if (g["fusion"], g["alpha"]) == (ch["fusion"], ch["alpha"])
        )
        == top
    )
    recall = {int(c): v for c, v in rep["fit"]["recall@k"].items()}
    assert 2 <= ch["k"] <= 8 and recall[ch["k"]] >= recall[8] - 0.01
    assert all(recall[c] < recall[8] - 0.01 for c in range(2, ch["k"]))
    assert rep["fit"]["gate"]["answerable_passed"] >= PASS and 0 < ch["min_cosine"] < 1
    assert rep["fit"]["gate"]["unanswerable"] + rep["held"]["gate"]["calibrated"]["unanswerable"] == 6
    assert set(rep["held"]["retrieval"]) == {"bm25", "vector", "hybrid-default", "hybrid-calibrated"}

    # the offline scoring is what search does: held-apart recall@5 / MRR through Retriever.search
    _, held = split(load_queries(str(qa)), 0.3, seed=0)
    with Retriever(str(index)) as r:
        assert (r.fusion, r.alpha) == (ch["fusion"], ALPHA if ch["alpha"] is None else ch["alpha"])
        for name, fusion, alpha in (
            ("hybrid-default", "convex", ALPHA),
            ("hybrid-calibrated", r.fusion, r.alpha),
        ):
            rows = [score_ranking(r.search(q["query"], "hybrid", 10, fusion=fusion, alpha=alpha).hits, q, 10)
                    for q in held if q["answerable"]]  # fmt: skip
            assert rep["held"]["retrieval"][name]["recall@5"] == pytest.approx(
                sum(x["recall@5"] for x in rows) / 20
            )
            assert rep["held"]["retrieval"][name]["mrr"] == pytest.approx(sum(x["mrr"] for x in rows) / 20)
        stored = r.calibration
    assert {k: stored[k] for k in ("fusion", "min_cosine", "k")} == {
        k: ch[k] for k in ("fusion", "min_cosine", "k")
    }

    # eval's gate follows the calibration unless given one
    ev = evaluate_rag(RagEvalConfig(str(index), str(qa), modes=["bm25"]), progress=False)
    assert ev["gate"]["min_cosine"] == ch["min_cosine"] and ev["calibration"]["k"] == ch["k"]
    ev = evaluate_rag(RagEvalConfig(str(index), str(qa), modes=["bm25"], min_cosine=0.2), progress=False)
    assert ev["gate"]["min_cosine"] == 0.2

    # --no-save reports without storing; --reset forgets
    calibrate(CalibrateConfig(str(index), str(qa), seed=3, save=False), progress=False)
    with Retriever(str(index)) as r:
        assert r.calibration["seed"] == 0
    assert calibrate(CalibrateConfig(str(index), reset=True))["had_calibration"]
    with Retriever(str(index)) as r:
        assert r.calibration is None and (r.fusion, r.alpha) == ("convex", ALPHA)


def _store(index: Path, calibration: dict) -> None:
    with Retriever(str(index)) as r:
        r.store.set_meta({CALIBRATION_KEY: json.dumps(calibration)})
        r.store.commit()


def test_search_and_ask_use_the_calibration_only_where_no_value_is_given(kb, tiny_model_dir):
    from slmforge.rag.ask import AskConfig, Asker

    index, _, _, facts = kb
    question = f"How do I set up my {facts[0]['name']} {facts[0]['device']}?"
    model = str(tiny_model_dir)

    ks: list[int] = []

    def spy(r: Retriever) -> Retriever:  # record the k each ask retrieves with
        search = r.search
        r.search = lambda q, mode, k, *rest, **kw: ks.append(k) or search(q, mode, k, *rest, **kw)
        return r

    with Asker(str(index), model, threads=1) as a:
        spy(a.retriever)  # no calibration: today's behaviour
        assert (a.retriever.fusion, a.retriever.alpha) == ("convex", ALPHA)
        ans = a.ask(AskConfig(str(index), question, model, max_new_tokens=4))
        assert not ans.abstained and ks == [4]  # the built-in gate (0.45) and k
        a.retriever.close()
        _store(index, {"fusion": "rrf", "k": 2, "min_cosine": 0.99})
        a.retriever = spy(Retriever(str(index)))  # as a new Asker would open it
        assert a.retriever.fusion == "rrf"
        ans = a.ask(AskConfig(str(index), question, model, max_new_tokens=4))
        assert ans.abstained and "< 0.99" in ans.text  # the calibrated gate
        ans = a.ask(AskConfig(str(index), question, model, max_new_tokens=4, min_cosine=0.0))
        assert not ans.abstained and len(ans.sources) <= 2
        a.ask(AskConfig(str(index), question, model, k=3, max_new_tokens=4, min_cosine=0.0))
        assert ks == [4, 2, 2, 3]  # the calibrated k, unless given one
    with Retriever(str(index), alpha=0.3) as r:  # an alpha given alone means convex, whatever was calibrated
        assert (r.fusion, r.alpha) == ("convex", 0.3)
    with Retriever(str(index), fusion="convex") as r:
        assert (r.fusion, r.alpha) == ("convex", ALPHA)


def test_a_damaged_calibration_keeps_only_its_valid_settings():
    cal = read_calibration(
        {CALIBRATION_KEY: json.dumps({"fusion": "mean", "alpha": 3, "k": 2.5, "min_cosine": 0.4})}
    )
    assert cal == {"min_cosine": 0.4}
    assert read_calibration({CALIBRATION_KEY: "{not json"}) is None
    assert read_calibration({CALIBRATION_KEY: ""}) is None and read_calibration({}) is None


def test_cli_calibrate_prints_the_before_after_table(kb, tmp_path, slm_cli):
    index, _, queries, _ = kb
    report = tmp_path / "r.json"
    code, out, err = slm_cli("rag", "calibrate", str(index), "--data", str(queries), "--report", str(report),
                             "--threads", "1")  # fmt: skip
    assert code == 0, err
    for row in ("bm25", "vector", "hybrid before (convex 0.6)", "hybrid after (", "min cosine", "k (chunks)"):
        assert row in out
    assert "stored in the index" in out and json.loads(report.read_text())["saved"]
    code, out, err = slm_cli("rag", "eval", str(index), "--queries", str(queries), "--mode", "hybrid")
    assert code == 0, err
    assert "the index's calibrated fusion" in out


def test_bad_calibration_input_is_refused_in_one_line(kb, tmp_path, slm_cli):
    index, qa, _, _ = kb
    rows = [json.loads(line) for line in qa.read_text().splitlines()]
    few = write_jsonl(tmp_path / "few.jsonl", [r for r in rows if r["answerable"]][:24])
    with pytest.raises(
        SlmError, match=r"the fit part holds 16 answerable questions \(24 in all.*at least 20"
    ):
        calibrate(CalibrateConfig(str(index), str(few)), progress=False)
    no_source = write_jsonl(
        tmp_path / "nosource.jsonl", [rows[0], {k: v for k, v in rows[1].items() if k != "source"}]
    )
    with pytest.raises(SlmError, match=r'nosource.jsonl:2 has no "source"'):
        calibrate(CalibrateConfig(str(index), str(no_source)), progress=False)
    no_query = write_jsonl(tmp_path / "noquery.jsonl", [{"text": "hello", "answerable": False}])
    with pytest.raises(SlmError, match=r'noquery.jsonl:1 needs a string field "query"'):
        calibrate(CalibrateConfig(str(index), str(no_query)), progress=False)
    with pytest.raises(SlmError, match="--held must be between 0 and 1"):
        calibrate(CalibrateConfig(str(index), str(qa), held=1.0), progress=False)
    with pytest.raises(SlmError, match="--data is required"):
        calibrate(CalibrateConfig(str(index)), progress=False)
    code, _, err = slm_cli("rag", "calibrate", str(tmp_path / "nosuch.sqlite"), "--data", str(qa))
    assert code != 0 and "no index at" in err and "Traceback" not in err
