"""slm quickstart end to end on tiny inputs: every stage runs and the summary holds real numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from slmforge import workspace
from slmforge.quickstart import QuickstartConfig, quickstart


def _corpus(tmp_path, docs):
    root = tmp_path / "corpus"
    root.mkdir()
    for i, text in enumerate(docs):
        (root / f"doc{i:03d}.md").write_text(f"# Note {i}\n\n{text}\n")
    return root


def test_quickstart_runs_every_stage(tmp_path, tiny_model_dir):
    from conftest import _tiny_docs

    from tests.test_rag import write_docs

    corpus = _corpus(tmp_path, _tiny_docs(300, seed=1))
    rag_docs = write_docs(tmp_path / "kb")
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
