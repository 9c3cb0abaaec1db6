"""`--arch static`: model2vec distils an encoder into a token table, a linear head on top; the artifact is
safetensors + JSON, runs without torch or model2vec, and is read by predict, `slm eval`, the /v1/classify
backend; ONNX export refused in one line; the unknown-token warning of the training log.

The encoder distilled here is minilm-l6 cut to one layer and to the fixture's vocabulary (~600 tokens), so
the distillation takes a second or two instead of minilm-l6's minute; data: 4 BANKING77 intents x 8
examples (tests/fixtures/classify).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("model2vec.distill", reason="pip install 'slmforge[static]'")

from slmforge.clf.configs import ClassifyTrainConfig  # noqa: E402
from slmforge.clf.evaluate import evaluate_classifier  # noqa: E402
from slmforge.clf.examples import read_examples  # noqa: E402
from slmforge.clf.predict import load_classifier, predict  # noqa: E402
from slmforge.clf.static import WEIGHTS_FILE, StaticModel  # noqa: E402
from slmforge.clf.train import train_classifier  # noqa: E402
from slmforge.clf.tuning import unknown_share  # noqa: E402
from slmforge.core import workspace  # noqa: E402

FIXTURES = Path(__file__).parents[1] / "fixtures" / "classify"
TRAIN, TEST = FIXTURES / "train.csv", FIXTURES / "test.csv"


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """minilm-l6 with one layer and the vocabulary of the fixture texts, saved as a plain BERT directory."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    from slmforge.clf.compress import trim_vocab
    from slmforge.clf.model import MeanPoolBertForSequenceClassification
    from slmforge.core.hub import resolve_model

    path = resolve_model("minilm-l6")
    tok = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path)
    wrapper = MeanPoolBertForSequenceClassification(bert.config)
    wrapper.bert = bert
    texts = read_examples(str(TRAIN), "text", "category")[0] + read_examples(str(TEST), "text", "category")[0]
    wrapper, tok = trim_vocab(wrapper, tok, texts)
    fields = {k: v for k, v in wrapper.config.to_dict().items() if k not in ("model_type", "architectures")}
    small = BertModel(BertConfig(**{**fields, "num_hidden_layers": 1}), add_pooling_layer=False)
    small.load_state_dict(wrapper.bert.state_dict(), strict=False)
    out = tmp_path_factory.mktemp("tiny_encoder") / "enc"
    small.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def static_dir(tiny_encoder, tmp_path_factory):
    home = tmp_path_factory.mktemp("slmhome_static")
    out = tmp_path_factory.mktemp("static") / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMFORGE_HOME", str(home))
        r = train_classifier(
            ClassifyTrainConfig(data=str(TRAIN), out=str(out), label_col="category", arch="static",
                                base=str(tiny_encoder), static_dims=32, val_fraction=0.25, oos=True, threads=1),
            progress=False,
        )  # fmt: skip
        assert list((home / "cache" / "static").iterdir()), "the distilled table is cached"
    assert r.arch == r.shipped == "static" and r.train_examples == 24 and r.val_examples == 8
    assert r.val_accuracy >= 0.5
    return out


def test_saved_files_are_json_safetensors_and_a_tokenizer(static_dir):
    from safetensors.numpy import load_file

    names = {p.name for p in static_dir.iterdir()}
    assert names == {"classifier.json", "static.json", WEIGHTS_FILE, "tokenizer.json", "train_log.jsonl",
                     workspace.MANIFEST}  # fmt: skip
    meta = json.loads((static_dir / "classifier.json").read_text())
    assert meta["arch"] == "static" and meta["dims"] == 32 and len(meta["labels"]) == 4
    assert 0 < meta["oos"]["threshold"] < 1
    tensors = load_file(str(static_dir / WEIGHTS_FILE))
    assert tensors["embeddings"].shape == (meta["vocab"], 32) and tensors["weight"].shape == (4, 32)
    assert meta["params"] == tensors["embeddings"].size + tensors["weight"].size + 4
    assert workspace.read_manifest(static_dir)["metrics"]["shipped"] == "static"


def test_embeddings_equal_model2vecs_own(static_dir):
    """The saved model embeds a text as model2vec's StaticModel.encode does (mean of rows, unknowns dropped,
    l2-normalised), from the same table and tokenizer."""
    from model2vec import StaticModel as M2V

    ours = StaticModel.load(static_dir)
    theirs = M2V(vectors=ours.embeddings, tokenizer=ours.tokenizer, normalize=True)
    texts = ["Where is my NEW card??", "top-up failed twice", "zzzz qqqq", "exchange rate for euros"]
    assert np.allclose(ours.embed(texts), theirs.encode(texts), atol=1e-5)
    assert not ours.embed([""]).any()  # no token: a zero vector, logits = the bias


def test_predict_eval_and_the_classify_backend_read_it(static_dir, slm_cli):
    from slmforge.serve.backends import ClassifyBackend
    from slmforge.serve.config import ModelConfig

    rows = predict(str(static_dir), ["I am still waiting for my new card", "what is the euro exchange rate"])
    assert all(0 < r["score"] <= 1 for r in rows) and len(rows) == 2
    clf = load_classifier(str(static_dir))
    assert clf.runtime == "numpy" and clf.token_counts(["my card"])[0] == 2
    r = evaluate_classifier(str(static_dir), str(TEST), label_col="category", latency_queries=20)
    assert r["runtime"] == "numpy" and r["params"] == clf.params() and r["accuracy"] >= 0.5
    assert r["p50_ms"] < 5
    code, out, err = slm_cli("eval", static_dir, "--task", "classification", "--data", TEST, "--label-col",
                             "category", "--latency-queries", "5")  # fmt: skip
    assert code == 0 and "numpy" in out, err
    served = ClassifyBackend(ModelConfig("st", "classify", str(static_dir)), threads=1).run(["my card"])
    assert served[0]["label"] in clf.labels and served[0]["tokens"] == 2


def test_onnx_export_and_int8_are_refused_in_one_line(static_dir, slm_cli, tmp_path):
    for verb in ("export", "quantize"):
        code, _, err = slm_cli(verb, static_dir, "--out", tmp_path / verb)
        assert code == 2 and "static classifier has no ONNX export" in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / verb).exists()


def test_a_non_bert_base_is_refused(tiny_model_dir, tmp_path):
    from slmforge.core.errors import SlmError

    with pytest.raises(SlmError, match="BERT-family"):
        train_classifier(ClassifyTrainConfig(data=str(TRAIN), out=str(tmp_path / "m"), label_col="category",
                                             arch="static", base=str(tiny_model_dir)), progress=False)  # fmt: skip


def test_unknown_share_counts_unk_and_byte_fallback(tiny_encoder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    assert unknown_share(tok, ["where is my card"]) == 0.0
    assert unknown_share(tok, ["where is my card", "ж ж"]) == pytest.approx(2 / 6)  # ж is not in the vocab
    vocab = {"<unk>": 0, "a": 1, "<0xD0>": 2, "<0xB6>": 3}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    assert unknown_share(bpe, ["a a ж"], unk_id=0) == pytest.approx(2 / 4)  # ж -> <0xD0> <0xB6>


def test_the_log_warns_on_a_high_unknown_token_share(tiny_encoder, tmp_path):
    train = tmp_path / "train.jsonl"
    rows = [
        {"text": f"{w} ж{i}", "label": lab} for i in range(6) for w, lab in (("card", "a"), ("rate", "b"))
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = train_classifier(ClassifyTrainConfig(data=str(train), out=str(tmp_path / "m"), arch="static",
                                             base=str(tiny_encoder), static_dims=8, val_fraction=0.34),
                         progress=False)  # fmt: skip
    (note,) = [n for n in r.notes if "unknown to the" in n]
    assert "% of the validation texts' tokens" in note and "[UNK]" in note


def test_rightsize_puts_the_tfidf_and_static_rungs_beside_the_transformers(tiny_encoder, tmp_path, slm_cli):
    base = train_classifier(ClassifyTrainConfig(data=str(TRAIN), out=str(tmp_path / "base"), label_col="category",
                                                base=str(tiny_encoder), epochs=1, max_len=32, threads=1,
                                                ship_baseline=False, few_shot_below=0), progress=False)  # fmt: skip
    code, out, err = slm_cli("rightsize", "--data", TRAIN, "--eval-data", TEST, "--out", tmp_path / "ladder",
                             "--base-model", base.model_dir, "--layers", "1", "--heal-epochs", "1", "--no-int8",
                             "--label-col", "category", "--threads", "1", "--latency-queries", "10",
                             "--target", "accuracy>=0.5*base")  # fmt: skip
    assert code == 0, err
    state = json.loads((tmp_path / "ladder" / "ladder.json").read_text())
    rows = {t["rung"]: t for t in state["table"]}
    assert list(rows) == ["base", "layers-1", "tfidf", "static"]
    assert rows["tfidf"]["runtime"] == "sklearn" and rows["static"]["runtime"] == "numpy"
    assert rows["static"]["p50_ms"] < rows["base"]["p50_ms"] and rows["static"]["params"] > 0
    static_meta = json.loads((tmp_path / "ladder" / "static" / "classifier.json").read_text())
    assert static_meta["base"] == str(tiny_encoder)  # distilled from the base's own encoder
    report = (tmp_path / "ladder" / "report.md").read_text()
    assert "| tfidf | sklearn |" in report and "| static | numpy |" in report
    assert "static" in out and "tfidf" in out


def test_the_ascii_shortcut_tokenizes_as_the_tokenizer_does(static_dir):
    ours = StaticModel.load(static_dir)
    assert ours._words  # minilm-l6's uncased BERT tokenizer
    texts = read_examples(str(TRAIN), "text", "category")[0] + [
        "Hello\x07World\x1f!! a_b c-d $5.00 `x` ~y^ {z}|\\ \t\n tabs\x0bvt\x0cff \x7fdel",
        "UPPER lower 123abc, (brackets) [and] 'quotes'",
        "",
        "café ж",  # not ASCII: the tokenizer itself
    ]
    unk = ours.info["unk_id"]
    theirs = [
        [i for i in e.ids if i != unk] for e in ours.tokenizer.encode_batch(texts, add_special_tokens=False)
    ]
    assert ours.token_ids(texts) == theirs
    assert ours.token_ids(texts) == theirs  # from the word cache the second time
