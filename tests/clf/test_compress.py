"""Prune / distill / rightsize on tiny data: smaller models that still load and predict, a resumable ladder,
and target expressions that parse or fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmforge.clf.compress import CompressConfig, distill, prune, trim_vocab
from slmforge.clf.configs import ClassifyTrainConfig
from slmforge.clf.predict import predict
from slmforge.clf.train import train_classifier
from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.ship.rightsize.classification import RightsizeConfig, parse_target, rightsize

FIXTURES = Path(__file__).parents[1] / "fixtures" / "classify"
TRAIN, TEST = FIXTURES / "train.csv", FIXTURES / "test.csv"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome_compress")))
        return train_classifier(
            ClassifyTrainConfig(
                data=str(TRAIN),
                out=str(tmp_path_factory.mktemp("t") / "teacher"),
                label_col="category",
                epochs=1,
                max_len=32,
                threads=1,
                ship_baseline=False,
                few_shot_below=0,
            ),  # fmt: skip
            progress=False,
        ).model_dir


@pytest.mark.recipe
def test_prune_drops_layers_and_vocabulary(teacher, tmp_path):
    from transformers import AutoModelForSequenceClassification

    m = prune(CompressConfig(teacher=teacher, data=str(TRAIN), out=str(tmp_path / "p"), layers=2, epochs=1,
                             threads=1), progress=False)  # fmt: skip
    assert m["layers"] == 2 and m["vocab_size"] < 1000 and m["params_vs_teacher"] < 0.25
    model = AutoModelForSequenceClassification.from_pretrained(m["out"], trust_remote_code=True)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == m["vocab_size"]
    labels = {r["label"] for r in predict(m["out"], ["where is my card", "top up failed", "zzz qqq"])}
    assert labels <= {"card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"}
    assert workspace.read_manifest(m["out"])["source"].startswith("prune:")


@pytest.mark.recipe
def test_distill_into_a_one_layer_student(teacher, tmp_path, slm_cli):
    code, out, err = slm_cli("distill", teacher, "--data", TRAIN, "--out", tmp_path / "d", "--student", "minilm-l6",
                             "--layers", "1", "--epochs", "1", "--threads", "1")  # fmt: skip
    assert code == 0, err
    manifest = workspace.read_manifest(tmp_path / "d")
    assert manifest["source"].startswith("distill:") and manifest["metrics"]["layers"] == 1
    assert len(predict(str(tmp_path / "d"), ["where is my card"])) == 1
    with pytest.raises(SlmError, match="not a torch classifier"):
        distill(
            CompressConfig(
                teacher=str(tmp_path), data=str(TRAIN), out=str(tmp_path / "e"), student="minilm-l6"
            )
        )


def test_trimmed_vocabulary_tokenizes_training_texts_identically():
    from transformers import AutoModel, AutoTokenizer

    from slmforge.clf.examples import read_examples
    from slmforge.clf.model import MeanPoolBertForSequenceClassification
    from slmforge.core.hub import resolve_model

    path = resolve_model("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    model = MeanPoolBertForSequenceClassification(AutoModel.from_pretrained(path).config)
    texts, _ = read_examples(str(TRAIN), "text", "category")
    _, new_tok = trim_vocab(model, tok, texts)  # raises if any training text tokenizes differently
    assert len(new_tok) < 1000
    assert (
        new_tok.decode(new_tok("Where is my card?")["input_ids"], skip_special_tokens=True)
        == "where is my card?"
    )


def test_rightsize_ladder_picks_and_resumes(teacher, tmp_path, slm_cli):
    args = ("rightsize", "--data", TRAIN, "--eval-data", TEST, "--out", tmp_path / "ladder", "--base-model",
            teacher, "--layers", "1", "--heal-epochs", "1", "--label-col", "category", "--threads", "1",
            "--latency-queries", "10", "--no-tfidf-static",  # those two rungs: tests/clf/test_static.py
            "--target", "accuracy>=0.5*base, params<=0.5*base")  # fmt: skip
    code, out, err = slm_cli(*args)
    assert code == 0, err
    state = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    assert set(state["rungs"]) >= {"base", "base-int8", "layers-1"}
    assert state["pick"] in ("layers-1", "layers-1-int8") and "pick" in out
    assert (tmp_path / "ladder" / "pareto.png").stat().st_size > 1000
    assert "**pick**" in (tmp_path / "ladder" / "report.md").read_text()
    code, out, err = slm_cli(*args)  # resume: nothing rebuilt or re-evaluated
    assert code == 0 and err.count("resumed") + err.count("skipped in an earlier run") == len(
        state["rungs"]
    ), err
    picked = [a for a in workspace.list_artifacts("model") if a.metrics.get("rightsize_pick")]
    assert picked and Path(picked[-1].path).name == state["pick"]


@pytest.mark.recipe
@pytest.mark.parametrize(
    "expr", ["accuracy>=", "accuracy => 0.9", "speed>=3", "accuracy>=0.97*bass", "", "accuracy>=0.9,,"]
)
def test_bad_targets_fail_in_one_line(expr, slm_cli, tmp_path):
    with pytest.raises(SlmError):
        parse_target(expr)
    code, _, err = slm_cli("rightsize", "--data", TRAIN, "--eval-data", TEST, "--out", tmp_path / "l",
                           "--target", expr)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "target" in err
    assert not (tmp_path / "l").exists()


def test_good_targets_parse():
    (a,) = parse_target("accuracy>=0.97*base")
    assert a.holds({"accuracy": 0.9}, {"accuracy": 0.92}) and not a.holds(
        {"accuracy": 0.89}, {"accuracy": 0.92}
    )
    a, b = parse_target(" macro_f1 > 0.8 , p50_ms<=5")
    assert a.threshold({}) == 0.8 and b.holds({"p50_ms": 4.0}, {})


@pytest.mark.recipe
def test_rightsize_refuses_a_non_classifier_base(tmp_path, tiny_model_dir):
    with pytest.raises(SlmError, match="not a torch classifier"):
        rightsize(RightsizeConfig(data=str(TRAIN), eval_data=str(TEST), out=str(tmp_path / "l"),
                                  base_model=str(tiny_model_dir)))  # fmt: skip
