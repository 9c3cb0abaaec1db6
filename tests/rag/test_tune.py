"""rag tune: training examples are `rag ask`'s prompts (gold placement, abstain share, IDK and citation
targets), bad input is refused in one line, and a tiny Llama tuned for a few steps answers through `rag ask`,
the server's RAG backend, merge and quantize keeping its prompt fingerprint."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.data import sft_data
from slmforge.rag.ask import IDK, PROMPT_RECORD, RAG_PROMPT_VERSION, AskConfig, Asker, check_prompt_version
from slmforge.rag.index import build_index
from slmforge.rag.search import Hit
from slmforge.rag.stores import open_store
from slmforge.rag.tune import RagTuneConfig, cite, first_sentences, make_examples, max_positions, rag_tune
from tests.rag.test_index_search import index_cfg, write_docs

QUESTIONS = {  # a phrase of the gold chunk -> question, answer
    "Prune roses": ("When should I prune roses?", "Prune roses in late winter, just before the buds swell."),
    "Tomatoes need": ("How much sun do tomatoes need?", "At least six hours of full sun a day."),
    "salted water": ("When do I add the pasta?", "Once the salted water is at a rolling boil."),
    "Knead the dough": (
        "How long should I knead bread dough?",
        "For ten minutes, until it is smooth and elastic.",
    ),
    "ZX-4711": ("What does error ZX-4711 mean?", "The flux capacitor overheated [3]."),
    "Jupiter": ("Which planet is the largest?", "Jupiter is the largest planet of the solar system."),
}


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """The four-document test index and its chunk ids by phrase."""
    root = tmp_path_factory.mktemp("tune_kb")
    docs = write_docs(root / "docs")
    index = root / "kb.sqlite"
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before the per-test workspace exists
        mp.setenv("SLMFORGE_HOME", str(root / "home"))
        build_index(index_cfg(docs, index), progress=False)
    store = open_store(str(index))
    try:
        chunks = store.chunks(list(range(1, 200)))
    finally:
        store.close()
    ids = {p: next(c for c in chunks.values() if p in c.text) for p in QUESTIONS}
    return index, ids


def write_rows(path: Path, kb, repeat: int = 1, unanswerable: int = 0) -> Path:
    _, ids = kb
    rows = []
    for _ in range(repeat):
        for phrase, (q, a) in QUESTIONS.items():
            c = ids[phrase]
            rows.append({"id": f"qa-{len(rows)}", "task": "qa", "question": q, "answer": a, "answerable": True,
                         "source": {"index": "kb", "doc": c.doc, "section": c.section, "chunk_id": c.id}})  # fmt: skip
    for _ in range(unanswerable):
        c = ids["Jupiter"]
        rows.append({"question": "How many rings does Saturn have?", "answer": IDK, "answerable": False,
                     "source": {"doc": c.doc, "chunk_id": c.id}})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tokenizer_of(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def examples(kb, model_dir, data, positions: int | None = 0, **kw):
    """make_examples for the rows of `data`, prompts budgeted for `positions` (0: the model's own context)."""
    cfg = RagTuneConfig(index=str(kb[0]), data=str(data), out="unused", **kw)
    return make_examples(
        cfg, tokenizer_of(model_dir), max_positions(str(model_dir)) if positions == 0 else positions
    )


# ---------------------------------------------------------------- the examples


def test_training_prompt_is_the_one_rag_ask_builds_for_the_same_sources(kb, tiny_model_dir, tmp_path):
    index, _ = kb
    exs, _ = examples(kb, tiny_model_dir, write_rows(tmp_path / "qa.jsonl", kb), gold_share=1.0)
    tok = tokenizer_of(tiny_model_dir)
    with Asker(str(index), str(tiny_model_dir), threads=1) as asker:
        chunks = asker.retriever.store.chunks([i for ex in exs for i in ex["meta"]["source_ids"]])
        for ex in exs:
            hits = [Hit(chunks[i], 0.0) for i in ex["meta"]["source_ids"]]
            question = ex["messages"][1]["content"].rsplit("Question: ", 1)[1]
            messages, sources, ids = asker.prompt(AskConfig(str(index), question), hits)
            assert messages == ex["messages"][:2] and sources == hits
            # and the tokens finetune trains on start with exactly the ids `rag ask` prompts with
            full, labels = sft_data.encode_chat(tok, ex["messages"], sft_data.stop_token_ids(tok))
            assert full[: len(ids)] == ids and set(labels[: len(ids)]) == {sft_data.IGNORE}
            assert ex["meta"]["prompt_tokens"] == len(ids) <= 512 - 128  # the tiny model reads 512 positions


def test_gold_sits_at_its_cited_position_among_hard_negatives(kb, tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "qa.jsonl", kb, repeat=4)
    room = {"positions": None, "context_tokens": 4096}  # all four sources fit
    exs, report = examples(kb, tiny_model_dir, data, gold_share=1.0, **room)
    assert report["answer"] == len(exs) == 24 and report["abstain"] == 0
    positions = Counter()
    for ex in exs:
        m, user, target = ex["meta"], ex["messages"][1]["content"], ex["messages"][2]["content"]
        n = m["gold"]
        assert m["source_ids"][n - 1] == m["chunk_id"] and len(set(m["source_ids"])) == len(m["source_ids"])
        assert len(m["source_ids"]) == 4
        block = user.split(f"[{n}] (", 1)[1]
        assert block.split("\n", 1)[1].startswith(_chunk_text(kb, m["chunk_id"])[:40])
        assert target.endswith(f"[{n}].") and target.count("[") == 1  # the answer's own wrong [3] is gone
        positions[n] += 1
    assert len(positions) == 4  # placed at random, not always first
    again, _ = examples(kb, tiny_model_dir, data, gold_share=1.0, **room)
    assert again == exs  # deterministic under the seed
    other, _ = examples(kb, tiny_model_dir, data, gold_share=1.0, seed=1, **room)
    assert [e["meta"]["gold"] for e in other] != [e["meta"]["gold"] for e in exs]
    # in the tiny model's 384-token budget fewer sources fit: the gold is always among those that do
    tight, report = examples(kb, tiny_model_dir, data, gold_share=1.0)
    for ex in tight:
        m = ex["meta"]
        assert m["source_ids"][m["gold"] - 1] == m["chunk_id"] and m["prompt_tokens"] <= 512 - 128


def test_abstain_share_and_unanswerable_rows_get_idk_without_the_gold_document(kb, tiny_model_dir, tmp_path):
    data = write_rows(tmp_path / "qa.jsonl", kb, repeat=8, unanswerable=3)
    exs, report = examples(kb, tiny_model_dir, data, gold_share=0.5)
    assert report["unanswerable"] == 3 and report["answer"] + report["abstain"] == 48
    assert 12 <= report["abstain"] <= 36
    _, ids = kb
    docs = {c.id: c.doc for c in ids.values()}
    store = open_store(str(kb[0]))
    try:
        for ex in exs:
            m = ex["meta"]
            if m["kind"] == "answer":
                continue
            assert ex["messages"][2]["content"] == IDK
            assert "gold" not in m and m["chunk_id"] not in m["source_ids"]
            assert all(c.doc != docs[m["chunk_id"]] for c in store.chunks(m["source_ids"]).values())
    finally:
        store.close()
    none, report = examples(kb, tiny_model_dir, data, gold_share=0.0)
    assert report["answer"] == 0 and all(e["messages"][2]["content"] == IDK for e in none)


def test_cite_appends_the_gold_number_unless_the_answer_cites_it():
    assert cite("Use json.dumps(obj).", 2) == "Use json.dumps(obj) [2]."
    assert cite("Use json.dumps(obj)", 2) == "Use json.dumps(obj) [2]"
    assert cite("Use json.dumps(obj) [2].", 2) == "Use json.dumps(obj) [2]."
    assert cite("Use json.dumps(obj) [1].", 3) == "Use json.dumps(obj) [3]."
    assert (
        cite("It returns a[1] and b [1] [4].", 4) == "It returns a[1] and b [4]."
    )  # indexing is not a citation
    assert cite("Wait for it...", 1) == "Wait for it... [1]"


def test_variants_give_each_row_its_own_draws_and_answers_can_be_cut_to_a_sentence(
    kb, tiny_model_dir, tmp_path
):
    data = write_rows(tmp_path / "qa.jsonl", kb)
    room = {"positions": None, "context_tokens": 4096, "gold_share": 1.0}
    one, _ = examples(kb, tiny_model_dir, data, **room)
    three, report = examples(kb, tiny_model_dir, data, variants=3, answer_sentences=1, **room)
    assert report["rows"] == 6 and report["examples"] == len(three) == 18
    assert [e for e in three if e["meta"]["variant"] == 0] == one  # the tiny answers are one sentence each
    for i in range(6):
        draws = {tuple(e["meta"]["source_ids"]) for e in three[3 * i : 3 * i + 3]}
        assert len(draws) >= 2  # other distractors or another position
    assert first_sentences("Use json.dumps(). It returns a str. Done.", 1) == "Use json.dumps()."
    assert first_sentences("Call os.path.join() first. Then `open` it.", 1) == "Call os.path.join() first."
    assert first_sentences("e.g. this. Or that", None) == "e.g. this. Or that"


def _chunk_text(kb, chunk_id: int) -> str:
    return next(c for c in kb[1].values() if c.id == chunk_id).text.strip()


# ---------------------------------------------------------------- bad input


def _tune(kb, model, data, out, **kw):
    return rag_tune(RagTuneConfig(index=str(kb[0]), data=str(data), out=str(out), base=str(model), threads=1,
                                  precision="fp32", **kw), progress=False)  # fmt: skip


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ({"question": "q?", "answer": "a."}, r'line 2: has no "source"'),
        ({"question": "q?", "answer": "a.", "source": {"doc": "x"}}, r'line 2: has no "source.chunk_id"'),
        ({"question": "q?", "answer": "a.", "source": {"chunk_id": 99999}}, r"line 2: chunk_id 99999 is not in"),
        ({"question": "q?", "answer": "a.", "source": {"chunk_id": 1, "doc": "/elsewhere/x.txt"}},
         r"line 2: chunk_id 1 is from .*, not /elsewhere/x.txt"),
        ({"question": "", "answer": "a.", "source": {"chunk_id": 1}}, r'line 2: needs a non-empty "question"'),
        ({"question": "q?", "answer": "a.", "source": {"chunk_id": 1, "text_sha256": "0" * 64}},
         r"line 2: chunk_id 1's text is not the one the row was written from"),
    ],
)  # fmt: skip
def test_rows_without_provenance_or_with_unknown_chunks_are_refused_by_line(
    kb, tiny_model_dir, tmp_path, row, error
):
    data = tmp_path / "qa.jsonl"
    good = write_rows(tmp_path / "good.jsonl", kb).read_text().splitlines()[0]
    data.write_text(good + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SlmError, match=error):
        _tune(kb, tiny_model_dir, data, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing half-made is left behind


def test_no_usable_rows_bad_shares_and_methods_are_refused(kb, tiny_model_dir, tmp_path, slm_cli):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(SlmError, match="holds no QA rows"):
        _tune(kb, tiny_model_dir, empty, tmp_path / "run")
    # every row quarantined: an index whose guard flagged the gold chunks
    quarantined = tmp_path / "kb.sqlite"
    shutil.copy(kb[0], quarantined)
    data = write_rows(tmp_path / "qa.jsonl", kb)
    import sqlite3

    with sqlite3.connect(quarantined) as con:
        con.execute("UPDATE chunks SET flag = 'injection:rule:test'")
    with pytest.raises(
        SlmError, match=r"none of its 6 rows made a training example \(6 with a quarantined gold"
    ):
        rag_tune(RagTuneConfig(index=str(quarantined), data=str(data), out=str(tmp_path / "run"),
                               base=str(tiny_model_dir)), progress=False)  # fmt: skip
    for kw, error in (({"gold_share": 1.5}, "--gold-share must be between 0 and 1"),
                      ({"gold_share": -0.1}, "--gold-share must be between 0 and 1"),
                      ({"val_share": 1.0}, r"--val-share must be in \[0, 1\)"),
                      ({"variants": 0}, "--variants must be at least 1"),
                      ({"answer_sentences": 0}, "--answer-sentences must be at least 1"),
                      ({"method": "prompt-tuning"}, "--method must be lora or full, not 'prompt-tuning'")):  # fmt: skip
        with pytest.raises(SlmError, match=error):
            _tune(kb, tiny_model_dir, data, tmp_path / "run", **kw)
    code, out, err = slm_cli(
        "rag", "tune", kb[0], "--data", data, "--out", tmp_path / "run", "--method", "qlora"
    )
    assert code != 0 and "--method must be lora or full, not 'qlora'" in out + err
    assert "Traceback" not in out + err


def test_a_model_tuned_on_another_prompt_is_refused_naming_both(kb, tiny_model_dir, tmp_path, slm_cli):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    workspace.register("model", other, metrics={PROMPT_RECORD: "0123456789ab"})
    with pytest.raises(
        SlmError, match=f"tuned on RAG prompt 0123456789ab.*builds prompt {RAG_PROMPT_VERSION}"
    ):
        Asker(str(kb[0]), str(other), threads=1)
    code, out, err = slm_cli(
        "rag", "ask", kb[0], "When should I prune roses?", "--model", other, "--threads", "1"
    )
    assert code != 0 and "0123456789ab" in out + err and RAG_PROMPT_VERSION in out + err
    check_prompt_version(str(tiny_model_dir))  # a model with no record (a base) is accepted


# ---------------------------------------------------------------- the whole workflow


@pytest.mark.recipe
def test_tune_a_tiny_model_then_ask_it_serve_it_merge_and_quantize_it(
    kb, tiny_model_dir, tmp_path, slm_cli, monkeypatch
):
    from slmforge.infer.model_dirs import read_manifest
    from slmforge.lm.merge import MergeConfig, merge
    from slmforge.serve.backends import RagBackend
    from slmforge.serve.config import ModelConfig
    from slmforge.ship.quantize import QuantizeConfig, quantize
    from slmforge.train import telemetry

    index, _ = kb
    data = write_rows(tmp_path / "qa.jsonl", kb, repeat=2, unanswerable=2)
    run = tmp_path / "tuned"
    kw = dict(lr=5e-3, max_steps=5, batch_size=2, checkpoint_every=3)
    real_step = telemetry.StepLogger.step

    def crash_after_4(self, step, *args):
        real_step(self, step, *args)
        if step == 4:
            raise KeyboardInterrupt  # like a kill after the step-3 checkpoint

    monkeypatch.setattr(telemetry.StepLogger, "step", crash_after_4)
    with pytest.raises(KeyboardInterrupt):
        _tune(kb, tiny_model_dir, data, run, **kw)
    monkeypatch.setattr(telemetry.StepLogger, "step", real_step)
    made = (run / "train.jsonl").stat().st_mtime_ns
    assert not (run / "adapter").exists()
    r = _tune(kb, tiny_model_dir, data, run, resume=True)  # continues like finetune, on the same examples
    assert r.steps == 5 and (run / "train.jsonl").stat().st_mtime_ns == made
    assert r.examples["examples"] == 14 and r.examples["val"] == 1 and (run / "val.jsonl").exists()
    assert read_manifest(run / "adapter")["metrics"][PROMPT_RECORD] == RAG_PROMPT_VERSION
    # rag ask takes the run dir as it is
    code, out, err = slm_cli("rag", "ask", index, "When should I prune roses?", "--model", run, "--threads", "1",
                             "--min-score", "0", "--max-new-tokens", "8")  # fmt: skip
    assert code == 0, out + err
    assert any(
        s in out + err for s in ("cited by the model", "citation attributed by word overlap", "abstained")
    )
    # so does the server's RAG backend
    backend = RagBackend(
        ModelConfig(name="docs", kind="rag", index=str(index), generator=str(run)), str(run), 1
    )
    ans, sources = backend.ask("When should I prune roses?", 4, 8, "hybrid")
    assert ans.prompt_tokens > 0 or ans.abstained
    backend.executor.shutdown()
    # merging the adapter and quantizing the merged model keep the fingerprint
    merge(MergeConfig(adapter=str(run), out=str(tmp_path / "merged")))
    assert read_manifest(tmp_path / "merged")["metrics"][PROMPT_RECORD] == RAG_PROMPT_VERSION
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(" ".join(["Prune roses in late winter, just before the buds swell."] * 200))
    quantize(QuantizeConfig(model=str(tmp_path / "merged"), out=str(tmp_path / "int8"), heldout=str(heldout)))
    assert read_manifest(tmp_path / "int8")["metrics"][PROMPT_RECORD] == RAG_PROMPT_VERSION
    check_prompt_version(str(tmp_path / "int8"))
