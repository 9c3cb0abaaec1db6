"""rag eval --answers: the answer-level metrics (a stub asker), the refusals, and the CLI with a tiny model."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest

from slmforge.core.errors import SlmError
from slmforge.rag.ask import IDK, Answer
from slmforge.rag.evaluate import RagEvalConfig, answer_metrics, evaluate_rag, load_queries
from slmforge.rag.index import build_index
from slmforge.rag.search import Hit
from slmforge.rag.store import StoredChunk
from tests.rag.calib_corpus import write_jsonl
from tests.rag.test_index_search import index_cfg, write_docs


def _hit(path: str, section: str) -> Hit:
    return Hit(StoredChunk(1, path, path, section, 0, 10, "text", []), 1.0)


class StubAsker:
    """Answers from a table (question -> Answer); records which documents each question excluded."""

    def __init__(self, answers: dict[str, Answer]):
        self.answers, self.excluded, self.retriever = answers, {}, self
        self._now: tuple[str, ...] = ()

    @contextlib.contextmanager
    def excluding(self, *docs):
        self._now = docs
        yield
        self._now = ()

    def ask(self, cfg) -> Answer:
        self.excluded[cfg.question] = self._now
        return self.answers[cfg.question]


ROSES = _hit("/d/garden.md", "Gardening > Roses")
PASTA = _hit("/d/kitchen.rst", "Cooking > Pasta")
ROWS = [
    # key terms given: correct = holds one; the model cited [1] (relevant) itself
    {"query": "q1", "answer": "Prune roses in late winter.", "terms": ["late winter"],
     "relevant": [{"doc": "garden.md", "section": "Gardening > Roses"}]},
    # no terms: correct = F1 >= 0.5; the citation was attributed and points at the wrong document
    {"query": "q2", "answer": "Bring salted water to a rolling boil.", "relevant": [{"doc": "garden.md"}]},
    # answerable but the model abstained: wrong, F1 0, a false abstention
    {"query": "q3", "answer": "Knead for ten minutes.", "terms": ["ten minutes"], "relevant": [{"doc": "kitchen.rst"}]},
    # unanswerable synth row: asked without its source document, and the model abstained
    {"question": "q4", "answerable": False, "answer": IDK, "source": {"doc": "/d/space.txt", "section": "Moon"}},
]  # fmt: skip
ANSWERS = {
    "q1": Answer("Prune them in late winter [1].", False, [ROSES], [1], True, 0.8, seconds=1.0),
    "q2": Answer("Bring salted water to a boil [1]", False, [PASTA], [1], False, 0.7, seconds=2.0),
    "q3": Answer(f"{IDK}.", True, [], [], False, 0.6, seconds=3.0),
    "q4": Answer(f"{IDK}: nothing close enough", True, [], [], False, 0.2, seconds=4.0),
}


def test_answer_metrics_per_question_kind(tmp_path):
    queries = load_queries(str(write_jsonl(tmp_path / "q.jsonl", ROWS)))
    stub = StubAsker(ANSWERS)
    m = answer_metrics(
        stub, RagEvalConfig("kb", "q.jsonl", price_per_hour=0.36), "stub", queries, progress=False
    )
    assert stub.excluded["q4"] == ("/d/space.txt",) and stub.excluded["q1"] == ()
    assert (m["answerable"], m["unanswerable"]) == (3, 1)
    assert m["correct"] == pytest.approx(2 / 3)  # q1 by its term, q2 by F1 (10/11), q3 abstained
    assert m["term_rate"] == pytest.approx(1 / 2)  # q1 yes, q3 abstained
    assert m["f1"] == pytest.approx((0.8 + 10 / 11 + 0.0) / 3)  # 4 of 5 tokens; 5 of 5 against 5 of 6; 0
    assert m["citation_precision"] == pytest.approx(
        0.5
    )  # q1's [1] is the roses section, q2's is not garden.md
    assert m["model_cited"] == pytest.approx(0.5)
    assert m["abstained_unanswerable"] == 1.0 and m["abstained_answerable"] == pytest.approx(1 / 3)
    assert m["p50_s"] == pytest.approx(2.5) and 3.5 < m["p95_s"] <= 4.0
    assert m["cost_per_1k"] == pytest.approx(2.5 / 3600 * 0.36 * 1000)  # = slm eval's $/1k requests


def test_answers_need_reference_answers(tmp_path, slm_cli):
    bare = write_jsonl(
        tmp_path / "bare.jsonl", [{k: v for k, v in r.items() if k != "answer"} for r in ROWS[:3]]
    )
    with pytest.raises(
        SlmError, match=r'bare.jsonl has no reference answers \("answer" on the answerable rows\)'
    ):
        evaluate_rag(RagEvalConfig("kb", str(bare), answers=True), progress=False)
    partial = write_jsonl(
        tmp_path / "partial.jsonl", [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "answer"}]
    )
    with pytest.raises(
        SlmError, match=r'partial.jsonl:2 has no reference "answer" \(1 answerable rows lack one\)'
    ):
        evaluate_rag(RagEvalConfig("kb", str(partial), answers=True), progress=False)
    code, _, err = slm_cli("rag", "eval", "kb", "--queries", str(bare), "--answers")
    assert code != 0 and "has no reference answers" in err and "Traceback" not in err
    bad_terms = write_jsonl(tmp_path / "terms.jsonl", [{**ROWS[0], "terms": "late winter"}])
    with pytest.raises(SlmError, match=r'terms.jsonl:1: "terms" must be a list of strings'):
        load_queries(str(bad_terms))
    with pytest.raises(SlmError, match="no index at"):  # an unknown index, before any model loads
        evaluate_rag(RagEvalConfig(str(tmp_path / "nosuch.sqlite"), str(write_jsonl(tmp_path / "ok.jsonl", ROWS)),
                                   answers=True), progress=False)  # fmt: skip


@pytest.mark.recipe
def test_cli_answers_two_models_side_by_side(tmp_path, slm_cli, tiny_model_dir):
    docs = write_docs(tmp_path / "docs")
    index = tmp_path / "kb.sqlite"
    build_index(index_cfg(docs, index), progress=False)
    other = tmp_path / "tiny-copy"
    shutil.copytree(tiny_model_dir, other)
    rows = [
        {"query": "When should I prune roses?", "answer": "In late winter, before the buds swell.",
         "terms": ["winter"], "relevant": [{"doc": "garden.md", "section": "Gardening > Roses"}]},
        {"query": "What does error ZX-4711 mean?", "answer": "The flux capacitor overheated.",
         "relevant": [{"doc": "errors.txt"}]},
        {"query": "Who won the 1998 World Cup?", "answerable": False},
    ]  # fmt: skip
    queries = write_jsonl(tmp_path / "q.jsonl", rows)
    report = tmp_path / "answers.json"
    code, out, err = slm_cli("rag", "eval", str(index), "--queries", str(queries), "--answers", "--model",
                             str(tiny_model_dir), "--model", str(other), "--threads", "1", "--max-new-tokens", "8", "--out", str(report))  # fmt: skip
    assert code == 0, err
    rep = json.loads(report.read_text())
    assert list(rep["answers"]) == [str(tiny_model_dir), str(other)] and "retrieval" not in rep
    for m in rep["answers"].values():
        assert (m["answerable"], m["unanswerable"]) == (2, 1)
        assert m["abstained_unanswerable"] == 1.0  # the World Cup is far from every chunk: the gate abstains
        assert 0 <= m["correct"] <= 1 and m["p50_s"] > 0 and m["cost_per_1k"] > 0
    assert "rag answers: 2 answerable, 1 unanswerable" in out and "$/1k" in out and "false abstain" in out
    assert "eta" in err  # the progress bar, on stderr
