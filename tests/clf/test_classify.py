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
from slmforge.clf.head import fit_linear_head
from slmforge.clf.predict import predict
from slmforge.clf.train import train_classifier
from slmforge.clf.tuning import step_budget
from slmforge.core import workspace
from slmforge.core.errors import SlmError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "classify"
TRAIN, TEST, UNSEEN = FIXTURES / "train.csv", FIXTURES / "test.csv", FIXTURES / "unseen.csv"
TINY = dict(label_col="category", epochs=1, max_len=32, threads=1, val_fraction=0.25, few_shot_below=0,
            ship_baseline=False)  # fmt: skip


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
    stages = [row.get("stage") for row in log]
    assert stages[:4] == ["unknown_tokens", "frozen_lr", "tfidf", "budget"] and stages[-1] == "choice"
    assert log[0]["share"] == 0.0 and log[0]["texts"] == "validation"  # English: minilm-l6 reads every token
    log = log[1:]
    assert log[3]["epoch"] == 1 and log[3]["step"] == 1 and "val_accuracy" in log[3]
    assert "--epochs 1" in log[2]["text"] and trained.budget == log[2]["text"]
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
def test_few_shot_mode_takes_no_validation_split(tmp_path):
    """8 examples a label is below few_shot_below (16): few-shot mode by default, every example trains."""
    cfg = _cfg(tmp_path / "fs", few_shot_steps=3, few_shot_below=16, ship_baseline=True)
    r = train_classifier(cfg, progress=False)
    assert r.shipped == "few-shot" and r.train_examples == 32 and r.val_examples == 0 and r.steps_run == 0
    assert (
        "fewer than 16" in r.notes[0]
        and "no validation split" in r.notes[0]
        and "3 contrastive" in r.notes[0]
    )
    assert evaluate_classifier(r.model_dir, str(TEST), latency_queries=2)["accuracy"] >= 0.5
    meta = json.loads((Path(r.model_dir) / "classifier.json").read_text())
    assert meta["validation"] == "none"
    with pytest.raises(SlmError, match="pass --val"):
        train_classifier(_cfg(tmp_path / "fs2", few_shot_below=16, oos=True), progress=False)


def test_step_budget_fits_the_data():
    def budget(n, **kw):
        total, every, text = step_budget(n, ClassifyTrainConfig(data="d", out="o", **kw))
        return total, every, text

    assert budget(491)[:2] == (500, 50) and "raised to the floor of 500" in budget(491)[2]  # 16 steps a pass
    assert budget(9003)[:2] == (1410, 282)  # BANKING77's split: 5 passes of 282 steps, as 5 epochs were
    assert budget(100_000)[:2] == (3000, 600)  # a pass (3125 steps) is longer than the budget: 5 validations
    assert "capped at the ceiling of 3000" in budget(100_000)[2]
    assert budget(9003, epochs=2)[:2] == (564, 282) and budget(100, steps=7, eval_every=3)[:2] == (7, 3)


@pytest.mark.recipe
def test_early_stopping_keeps_the_best_validation(tmp_path):
    r = train_classifier(
        _cfg(tmp_path / "es", epochs=None, steps=4, eval_every=1, patience=1, head_init="random"),
        progress=False,
    )
    log = [json.loads(line) for line in (Path(r.model_dir) / "train_log.jsonl").read_text().splitlines()]
    rows = [row for row in log if "step" in row]
    accs = [row["val_accuracy"] for row in rows]
    assert r.steps_run == len(rows) < 4  # stopped after one validation without improvement
    assert r.best_step == rows[accs.index(max(accs))]["step"] < r.steps_run  # not the last step
    assert r.val_accuracy == max(accs)


@pytest.mark.recipe
def test_a_better_baseline_is_shipped_or_refused(tmp_path):
    """A head that cannot learn (learning rates ~0) stays near chance: the TF-IDF baseline (0.75) ships."""
    frozen = dict(epochs=None, steps=1, head_init="random", lr=1e-12, head_lr=1e-12, ship_baseline=True)
    r = train_classifier(_cfg(tmp_path / "tf", **frozen), progress=False)
    assert r.shipped == r.arch == "tfidf" and r.val_accuracy == r.tfidf_val_accuracy == 0.75
    assert "shipping the TF-IDF model" in r.notes[-1]
    assert (Path(r.model_dir) / "tfidf.safetensors").exists() and not (
        Path(r.model_dir) / "config.json"
    ).exists()
    assert predict(r.model_dir, ["what is the euro exchange rate"])[0]["label"] == "exchange_rate"
    # one step from the frozen-embedding head does not beat that head (1.0 on val): it is what ships
    r = train_classifier(_cfg(tmp_path / "lr", ship_baseline=True), progress=False)
    assert r.shipped == "frozen-lr" and r.best_step == 0 and "frozen encoder" in r.notes[-1]
    with pytest.raises(SlmError, match=r"does not beat frozen embeddings .* refusing \(--strict\)"):
        train_classifier(_cfg(tmp_path / "strict", strict=True, ship_baseline=True), progress=False)
    assert not (tmp_path / "strict").exists()


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
        ("category,text\nhi,greet\nhello,greet\nbye,leave\n", "every one of the 3 labels"),
        ("text,category\nhi,1\nhello,1\nbye,spam\nso long,spam\n", "mix numbers ('1') and words ('spam')"),
    ],
    ids=["missing-columns", "empty-text", "one-example-label", "one-label", "all-distinct", "mixed-kinds"],
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
