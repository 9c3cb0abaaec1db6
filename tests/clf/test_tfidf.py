"""`--arch tfidf`: the portable artifact (no pickle), its features against scikit-learn's, and every way a
classifier directory is used: predict, `slm eval`, the server's /v1/classify (tests/serve/test_api.py); ONNX export refused in one line.

Tiny real data: 4 BANKING77 intents x 8 examples (tests/fixtures/classify); fitting takes well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slmforge.clf.configs import ClassifyTrainConfig
from slmforge.clf.evaluate import evaluate_classifier
from slmforge.clf.examples import read_examples
from slmforge.clf.predict import load_classifier, predict
from slmforge.clf.tfidf import VECTORIZERS, WEIGHTS_FILE, TfidfModel, fit_tfidf
from slmforge.clf.train import train_classifier
from slmforge.core import workspace

FIXTURES = Path(__file__).parents[1] / "fixtures" / "classify"
TRAIN, TEST = FIXTURES / "train.csv", FIXTURES / "test.csv"


@pytest.fixture(scope="module")
def tfidf_dir(tmp_path_factory):
    home = tmp_path_factory.mktemp("slmhome_tfidf")
    out = tmp_path_factory.mktemp("tfidf") / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMFORGE_HOME", str(home))
        r = train_classifier(
            ClassifyTrainConfig(data=str(TRAIN), out=str(out), label_col="category", arch="tfidf",
                                val_fraction=0.25, oos=True, threads=1),
            progress=False,
        )  # fmt: skip
    assert r.arch == r.shipped == "tfidf" and r.train_examples == 24 and r.val_examples == 8
    return out


def test_saved_files_are_json_and_safetensors_with_a_manifest(tfidf_dir):
    names = {p.name for p in tfidf_dir.iterdir()}
    assert names == {"classifier.json", "tfidf.json", WEIGHTS_FILE, "train_log.jsonl", workspace.MANIFEST}
    meta = json.loads((tfidf_dir / "classifier.json").read_text())
    assert meta["arch"] == "tfidf" and meta["task"] == "classification" and len(meta["labels"]) == 4
    assert 0 < meta["oos"]["threshold"] < 1
    manifest = workspace.read_manifest(tfidf_dir)
    assert manifest["source"] == "classify:tfidf" and manifest["metrics"]["shipped"] == "tfidf"
    assert not list(tfidf_dir.glob("*.pkl")) and not list(tfidf_dir.glob("*.joblib"))


def test_features_equal_scikit_learns_vectorizers():
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts, labels = read_examples(str(TRAIN), "text", "category")
    names = sorted(set(labels))
    y = np.array([names.index(v) for v in labels])
    model = fit_tfidf(texts, y, len(names))
    vecs = [TfidfVectorizer(**{**p, "ngram_range": tuple(p["ngram_range"])}).fit(texts) for p in VECTORIZERS]
    queries = ["Where is my NEW card??", "top-up failed twice", "", "zzzz qqqq"] + texts[:3]
    theirs = sp.hstack([v.transform(queries) for v in vecs]).toarray()
    assert np.allclose(model.features(queries).toarray(), theirs, atol=1e-12)
    loaded = TfidfModel.load(_saved(model))
    assert np.allclose(loaded.logits(queries), model.logits(queries), atol=1e-6)


def _saved(model: TfidfModel) -> Path:
    import tempfile

    d = Path(tempfile.mkdtemp())
    model.save(d)
    return d


def test_predict_and_eval_read_the_tfidf_dir(tfidf_dir, slm_cli):
    rows = predict(str(tfidf_dir), ["I am still waiting for my new card", "what is the euro exchange rate"])
    assert [r["label"] for r in rows] == ["card_arrival", "exchange_rate"] and all(
        0 < r["score"] <= 1 for r in rows
    )
    clf = load_classifier(str(tfidf_dir))
    assert clf.runtime == "sklearn" and clf.token_counts(["my card", "жжж"])[1] == 0
    r = evaluate_classifier(str(tfidf_dir), str(TEST), latency_queries=5)
    assert r["accuracy"] >= 0.6 and r["runtime"] == "sklearn" and r["params"] == clf.params()
    code, out, err = slm_cli(
        "eval", tfidf_dir, "--task", "classification", "--data", TEST, "--latency-queries", "5"
    )
    assert code == 0, err
    assert "sklearn" in out


def test_onnx_export_and_int8_are_refused_in_one_line(tfidf_dir, slm_cli, tmp_path):
    for verb in ("export", "quantize"):
        code, _, err = slm_cli(verb, tfidf_dir, "--out", tmp_path / verb)
        assert code == 2 and "skl2onnx" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / verb).exists()


def test_prune_distill_and_rightsize_refuse_it(tfidf_dir, slm_cli, tmp_path):
    for args in (
        ("prune", tfidf_dir, "--data", TRAIN, "--layers", "1", "--out", tmp_path / "p"),
        ("distill", tfidf_dir, "--data", TRAIN, "--student", "minilm-l6", "--out", tmp_path / "d"),
        ("rightsize", "--task", "classification", "--data", TRAIN, "--eval-data", TEST, "--base-model", tfidf_dir,
         "--label-col", "category", "--out", tmp_path / "r"),
    ):  # fmt: skip
        code, _, err = slm_cli(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "is a tfidf classifier" in err or "a tfidf or ONNX model cannot be pruned" in err, err
