"""slm quickstart end to end on tiny inputs: every stage runs and the summary holds real numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.quickstart import QuickstartConfig, intent_data, intent_finetune, quickstart
from slmforge.route.pipeline import BANK_DIR


def _corpus(tmp_path, docs):
    root = tmp_path / "corpus"
    root.mkdir()
    for i, text in enumerate(docs):
        (root / f"doc{i:03d}.md").write_text(f"# Note {i}\n\n{text}\n")
    return root


def _qa_rows(rag_docs: Path, path: Path) -> Path:
    """QA rows over the test docs as the shipped file has them: each with its chunk's text_sha256 and the
    chunk id of another index (the quickstart finds the chunk by its text)."""
    import hashlib
    import json

    from slmforge.rag.index import RagIndexConfig, build_index
    from slmforge.rag.stores import open_store
    from tests.rag.test_tune import QUESTIONS

    index = path.with_suffix(".sqlite")
    build_index(RagIndexConfig(paths=[str(rag_docs)], index=str(index), threads=1), progress=False)
    store = open_store(str(index))
    try:
        chunks = store.chunks_to_check(0, 1000, True)
    finally:
        store.close()
    rows = []
    for phrase, (q, a) in QUESTIONS.items():
        c = next(c for c in chunks if phrase in c.text)
        sha = hashlib.sha256(c.text.encode()).hexdigest()
        rows.append(
            {"question": q, "answer": a, "source": {"doc": "elsewhere", "chunk_id": 999, "text_sha256": sha}}
        )
    rows.append({"question": "q?", "answer": "a.", "source": {"chunk_id": 5, "text_sha256": "0" * 64}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_shipped_rows_find_their_chunks_by_text(tmp_path):
    import json

    from slmforge.quickstart import anchor_rows
    from slmforge.rag.stores import open_store
    from tests.rag.test_index_search import write_docs

    rag_docs = write_docs(tmp_path / "kb")
    qa = _qa_rows(rag_docs, tmp_path / "qa.jsonl")
    index = tmp_path / "other.sqlite"
    from slmforge.rag.index import RagIndexConfig, build_index

    build_index(RagIndexConfig(paths=[str(rag_docs)], index=str(index), threads=1), progress=False)
    assert anchor_rows(qa, str(index), tmp_path / "anchored.jsonl") == (6, 1)
    rows = [json.loads(x) for x in (tmp_path / "anchored.jsonl").read_text().splitlines()]
    store = open_store(str(index))
    try:
        for r in rows:
            c = store.chunks([r["source"]["chunk_id"]])[r["source"]["chunk_id"]]
            assert r["source"]["doc"] == c.doc and r["answer"]  # the id and doc of this index's chunk
    finally:
        store.close()


@pytest.mark.recipe
def test_quickstart_runs_every_stage(tmp_path, tiny_model_dir):
    from tests.conftest import _tiny_docs
    from tests.rag.test_index_search import write_docs

    corpus = _corpus(tmp_path, _tiny_docs(300, seed=1))
    rag_docs = write_docs(tmp_path / "kb")
    qa = _qa_rows(rag_docs, tmp_path / "qa.jsonl")
    s = quickstart(
        QuickstartConfig(
            corpus=[str(corpus)],
            out=str(tmp_path / "qs"),
            vocab_size=400,
            depth="2",
            pretrain_minutes=0.05,
            base=str(tiny_model_dir),
            continue_minutes=0.05,
            eval_tokens=256,
            threads=1,
            prompt="The cat",
            rag_docs=[str(rag_docs)],
            rag_question="When should I prune roses?",
            rag_qa=str(qa),
            rag_tune_minutes=0.02,
            finetune_minutes=0.01,
            finetune_eval_items=3,
            finetune_shots=1,
            bank_quick=True,
        )
    )
    assert s["scratch"].steps >= 1 and (tmp_path / "qs" / "scratch" / "model" / "model.safetensors").exists()
    assert (tmp_path / "qs" / "continued" / "model" / "config.json").exists()
    continued = str(tmp_path / "qs" / "continued" / "model")
    assert [r["model"] for r in s["eval"]] == [str(tiny_model_dir), continued, s["scratch"].model_dir]
    assert s["params"][continued] == s["params"][str(tiny_model_dir)]
    assert all(r["perplexity"] > 1 for r in s["eval"])
    assert len(s["samples"]) == 2
    rag = s["rag"]
    assert rag["files"] >= 3 and rag["chunks"] >= 3 and Path(rag["index"]).exists()
    assert rag["answer"] and (rag["abstained"] or rag["sources"][0].startswith("[1] garden.md > Gardening"))
    tune = rag["tune"]
    assert tune["rows"] == 6 and tune["rows_not_found"] == 1 and tune["steps"] >= 1
    assert rag["model"] == tune["out"] and (Path(tune["out"]) / "adapter" / "adapter_config.json").exists()
    assert len(s["finetune"]["rows"]) == 3 and (tmp_path / "qs" / "finetune" / "eval.md").exists()
    serve = s["serve"]
    assert serve["result"]["label"] == "lost_or_stolen_card" and serve["result"]["citations"]
    from slmforge.serve.auth import list_keys
    from slmforge.serve.config import load_config

    assert load_config(serve["config"]).pipelines and "Bearer slm-" in serve["curl"]
    assert [k.name for k in list_keys()] == [serve["key_name"]]
    kinds = [a.kind for a in workspace.list_artifacts()]
    assert kinds.count("model") >= 2 and "dataset" in kinds and "tokenizer" in kinds


def test_quickstart_missing_corpus_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "slmforge.cli", "quickstart", "--corpus", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: corpus") and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.recipe
def test_finetune_step_tunes_and_tables_three_models(tmp_path, tiny_model_dir, capsys):
    """Step 7 on the tiny model: the shipped split is written, LoRA trains, one table holds the base
    zero-shot, the base few-shot and the LoRA model, scored on the same held-out questions."""
    import json

    cfg = QuickstartConfig(
        base=str(tiny_model_dir), finetune_minutes=0.02, finetune_eval_items=5, finetune_shots=2, threads=1
    )
    ft = intent_finetune(cfg, tmp_path / "qs")
    out = tmp_path / "qs" / "finetune"

    # the data: every shipped example, the held-out questions apart from the training messages
    train = [json.loads(x) for x in (out / "data" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (out / "data" / "test.jsonl").read_text().splitlines()]
    assert len(train) == ft["train_examples"] == 196 and len(test) == ft["test_items"] == 36
    assert set(train[0]) == {"prompt", "completion"} and not {r["prompt"] for r in test} & {
        r["prompt"] for r in train
    }
    labels = (out / "data" / "labels.txt").read_text().split()
    assert len(labels) == ft["intents"] == 12 and {r["completion"] for r in test} <= set(labels)
    again = intent_data(BANK_DIR, tmp_path / "again")  # deterministic: the same files on every run
    assert Path(again["test"]).read_bytes() == (out / "data" / "test.jsonl").read_bytes()

    # the run and the table
    assert ft["steps"] >= 1 and (Path(ft["adapter"]) / "adapter_config.json").exists()
    rows = ft["rows"]
    base = str(tiny_model_dir)
    assert [(r["model"], r["shots"]) for r in rows] == [(base, 0), (base, 2), (ft["run"], 0)]
    for r in rows:
        assert r["items"] == 5 and r["backend"] == "torch" and 0.0 <= r["exact_match"] <= 1.0
        assert r["p50_s"] > 0 and r["tokens_per_s"] > 0 and r["cost_per_1k"] > 0 and r["peak_rss_mb"] is None
    saved = json.loads((out / "eval.json").read_text())
    assert saved["task"] == "generation" and [r["shots"] for r in saved["rows"]] == [0, 2, 0]
    md = (out / "eval.md").read_text()
    assert md.count(f"| {Path(base).name} | torch fp32 |") == 2 and "| intents-lora | torch fp32 |" in md
    assert "held-out questions" in md
    assert (out / "eval.png").stat().st_size > 1000
    preds = (out / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 15 and json.loads(preds[0])["reference"] in labels
    kinds = {(a.kind, a.name) for a in workspace.list_artifacts()}
    assert ("adapter", "intents-lora/adapter") in kinds and ("dataset", "bank-intents-gen") in kinds

    from slmforge.cli.quickstart import print_finetune  # the quickstart summary's table

    capsys.readouterr()
    print_finetune(ft)
    shown = capsys.readouterr().out
    assert "model zero-shot" in shown and "model 2-shot" in shown and "intents-lora (LoRA)" in shown
    assert f"{rows[2]['exact_match']:.3f}" in shown and "eval.md" in shown


@pytest.mark.recipe
def test_finetune_step_without_bank_data_skips_with_a_note(tmp_path, tiny_model_dir):
    cfg = QuickstartConfig(base=str(tiny_model_dir), threads=1)
    ft = intent_finetune(cfg, tmp_path / "qs", bank_dir=tmp_path / "nowhere")
    assert "intents.csv" in ft["skipped"] and not (tmp_path / "qs" / "finetune").exists()
    with pytest.raises(SlmError, match="--finetune-minutes must be"):
        quickstart(QuickstartConfig(finetune_minutes=-1))
    with pytest.raises(SlmError, match="--rag-tune-minutes must be"):
        quickstart(QuickstartConfig(rag_tune_minutes=-1))
    with pytest.raises(SlmError, match="--rag-qa: .*nowhere.jsonl does not exist"):
        quickstart(QuickstartConfig(rag_qa=str(tmp_path / "nowhere.jsonl")))
