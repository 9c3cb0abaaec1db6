"""Text classifiers: training, the saved HF directory, predict / eval, OOS, few-shot, and every bad input.

Tiny real data: 4 BANKING77 intents x 8 examples (tests/fixtures/classify), 1 epoch, max_len 32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slmforge.clf.configs import ClassifyTrainConfig
from slmforge.clf.evaluate import evaluate_classifier
from slmforge.clf.examples import read_examples, stratified_split
from slmforge.clf.predict import predict
from slmforge.clf.train import fit_linear_head, train_classifier
from slmforge.core import workspace
from slmforge.core.errors import SlmError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "classify"
TRAIN, TEST, UNSEEN = FIXTURES / "train.csv", FIXTURES / "test.csv", FIXTURES / "unseen.csv"
TINY = dict(label_col="category", epochs=1, max_len=32, threads=1, val_fraction=0.25)


def _cfg(out, **kw) -> ClassifyTrainConfig:
    return ClassifyTrainConfig(data=str(TRAIN), out=str(out), **{**TINY, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny classifier with an OOS threshold, shared by the read-only tests below."""
    home = tmp_path_factory.mktemp("slmhome_classify")
    out = tmp_path_factory.mktemp("classify") / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMFORGE_HOME", str(home))
        result = train_classifier(_cfg(out, oos=True), progress=False)
    return result


def test_trained_dir_is_an_hf_classifier_with_labels(trained):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(trained.model_dir, trust_remote_code=True)
    assert model.config.id2label == dict(enumerate(trained.labels))
    assert trained.labels == ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"]
    tok = AutoTokenizer.from_pretrained(trained.model_dir)
    texts = ["I am still waiting for my new card", "what is the euro exchange rate"]
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, return_tensors="pt")).logits
    ours = predict(trained.model_dir, texts)
    probs = torch.softmax(logits, -1).max(-1).values.numpy()
    assert np.allclose([r["score"] for r in ours], probs, atol=1e-5)
    assert trained.train_examples == 24 and trained.val_examples == 8
    assert 0 < trained.oos_threshold < 1
    meta = json.loads((Path(trained.model_dir) / "classifier.json").read_text())
    assert meta["oos"]["threshold"] == trained.oos_threshold and meta["max_len"] == 32
    log = [
        json.loads(line) for line in (Path(trained.model_dir) / "train_log.jsonl").read_text().splitlines()
    ]
    assert log[0]["stage"] == "frozen_lr" and log[1]["epoch"] == 1 and "val_accuracy" in log[1]
    assert workspace.read_manifest(trained.model_dir)["metrics"]["params"] == trained.params


def test_learns_the_tiny_intents(trained):
    r = evaluate_classifier(trained.model_dir, str(TEST), latency_queries=5)
    assert r["accuracy"] >= 0.75  # frozen MiniLM + LR alone separates these four intents
    assert r["params"] == trained.params and r["disk_mb"] > 50 and r["p50_ms"] > 0
    assert {row["label"] for row in r["per_class"]} >= set(trained.labels)


def test_cli_predict_and_eval(trained, slm_cli, tmp_path):
    code, out, err = slm_cli("classify", "predict", trained.model_dir, "where is my new card?", "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["label"] in ("card_arrival", "oos")
    report = tmp_path / "report"
    code, out, err = slm_cli(
        "eval",
        trained.model_dir,
        "--task",
        "classification",
        "--data",
        TEST,
        "--report-dir",
        report,
        "--latency-queries",
        "10",
    )
    assert code == 0, err
    assert "accuracy" in out and "p50 ms" in out
    (sub,) = report.iterdir()
    assert (sub / "confusion.png").stat().st_size > 1000
    assert json.loads((sub / "metrics.json").read_text())["examples"] == 16


def test_unseen_labels_refused_or_scored_as_oos(trained, slm_cli):
    code, _, err = slm_cli("eval", trained.model_dir, "--task", "classification", "--data", UNSEEN)
    assert code == 2 and "pin_blocked" in err and "not trained on" in err
    r = evaluate_classifier(trained.model_dir, str(UNSEEN), unseen_as_oos=True, latency_queries=5)
    assert r["oos_examples"] == 4 and 0 <= r["oos_recall"] <= 1 and r["in_scope_accuracy"] is not None


@pytest.mark.recipe
def test_few_shot_mode(tmp_path):
    r = train_classifier(_cfg(tmp_path / "fs", few_shot=True, few_shot_steps=3), progress=False)
    assert r.epochs_run == 0 and r.val_accuracy >= 0.5


def test_linear_head_folds_the_standardisation():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(60, 5)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 6).astype(int) + 2 * (x[:, 2] > 3)
    head = fit_linear_head(x, y, 4, seed=0)
    assert (head.predict(x) == y).mean() > 0.9


def test_stratified_split_keeps_every_label_in_train():
    labels = ["a"] * 10 + ["b"] * 2 + ["c"] * 3
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(15))
    assert {labels[i] for i in train} == {"a", "b", "c"} and {labels[i] for i in val} == {"a", "b", "c"}


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _train_cli(slm_cli, data, out, *extra):
    return slm_cli("classify", "train", "--data", data, "--out", out, "--label-col", "category",
                   "--epochs", "1", "--max-len", "16", "--threads", "1", *extra)  # fmt: skip


@pytest.mark.parametrize(
    "content, expected",
    [
        ("utterance,intent\nhello,greet\n", "columns found: utterance, intent"),
        ("text,category\nhello,greet\n  ,greet\nbye,leave\nbye now,leave\n", ":3 has an empty 'text'"),
        ("text,category\nhi,greet\nhello,greet\nbye,leave\n", "fewer than 2 examples ('leave')"),
        ("text,category\nhi,greet\nhello,greet\n", "only one label"),
    ],
    ids=["missing-columns", "empty-text", "one-example-label", "one-label"],
)
def test_bad_training_files(slm_cli, tmp_path, content, expected):
    data = _write(tmp_path / "data.csv", content)
    code, _, err = _train_cli(slm_cli, data, tmp_path / "out")
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bad_encodings(slm_cli, tmp_path):
    data = _write(tmp_path / "data.csv", "text,category\ncafé crème,a\nthé,a\nbière,b\nvin,b\n", "latin-1")
    code, _, err = _train_cli(slm_cli, data, tmp_path / "out")
    assert code == 2 and "not valid utf-8" in err and "--encoding" in err
    code, _, err = _train_cli(slm_cli, data, tmp_path / "out", "--encoding", "klingon-8")
    assert code == 2 and "unknown encoding 'klingon-8'" in err
    texts, _ = read_examples(str(data), "text", "category", encoding="latin-1")
    assert texts[0] == "café crème"


@pytest.mark.recipe
def test_min_per_class_can_be_lowered_and_jsonl_is_read(tmp_path):
    rows = [{"text": t, "category": c} for t, c in [("hi", "a"), ("hello", "a"), ("bye", "b")]]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts, labels = read_examples(str(data), "text", "category")
    assert labels == ["a", "a", "b"]
    with pytest.raises(SlmError, match="fewer than 2"):
        train_classifier(ClassifyTrainConfig(data=str(data), out=str(tmp_path / "o"), label_col="category"))


@pytest.mark.parametrize(
    "base, expected",
    [("smollm2-135m-instruct", "not an encoder"), ("no/such-model-anywhere", "cannot load")],
)
def test_untrainable_base(slm_cli, tmp_path, base, expected):
    code, _, err = _train_cli(slm_cli, TRAIN, tmp_path / "out", "--base", base)
    assert code == 2 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_untrainable_base_dir(slm_cli, tmp_path, tiny_model_dir):
    code, _, err = _train_cli(slm_cli, TRAIN, tmp_path / "out", "--base", tiny_model_dir)
    assert code == 2 and "'llama' model" in err, err


def test_existing_output_is_not_replaced(slm_cli, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, _, err = _train_cli(slm_cli, TRAIN, tmp_path / "out")
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
