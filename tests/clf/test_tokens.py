"""Token classifiers (entity extraction): training on a tiny slice of the hand-labelled set, the saved HF
directory, spans from predictions (windows for long texts), `slm eval --task extraction`, spaCy's
baseline, and every bad input as a one-line error with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slmforge.clf.configs import TokenTrainConfig
from slmforge.clf.tokens import TokenClassifier, bio_tags, encode, spans_from_tags, train_token_classifier
from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.data.entities import Span

SETS = Path(__file__).parents[2] / "benchmarks" / "data" / "entities"
LABELS = ["DATE", "LOCATION", "MONEY", "ORG", "PERSON", "PRODUCT"]


def _slice(src: Path, dst: Path, n: int) -> str:
    dst.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return str(dst)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """A tagger trained 5 short epochs on 48 training sentences (shared by the read-only tests below)."""
    d = tmp_path_factory.mktemp("tokens")
    data = _slice(SETS / "train.jsonl", d / "train.jsonl", 48)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome_tokens")))
        cfg = TokenTrainConfig(data=data, out=str(d / "model"), epochs=5, batch_size=8, head_lr=3e-3, max_len=48,
                               threads=1, val_fraction=0.25, patience=5)  # fmt: skip
        result = train_token_classifier(cfg, progress=False)
        manifest = workspace.read_manifest(result.model_dir)
    return result, manifest, d


def test_the_saved_dir_is_an_hf_token_classifier_with_bio_tags(tagger):
    from transformers import AutoModelForTokenClassification

    result, manifest, _ = tagger
    model = AutoModelForTokenClassification.from_pretrained(result.model_dir)  # no remote code needed
    assert result.labels == LABELS
    assert model.config.id2label == dict(enumerate(bio_tags(LABELS)))
    assert model.config.id2label[0] == "O" and model.config.id2label[1] == "B-DATE"
    meta = json.loads((Path(result.model_dir) / "classifier.json").read_text())
    assert meta["task"] == "tokens" and meta["labels"] == LABELS and meta["max_len"] == 48
    log = [json.loads(x) for x in (Path(result.model_dir) / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5] and all("val_f1" in r for r in log)
    assert result.train_examples == 36 and result.val_examples == 12 and 1 <= result.best_epoch <= 5
    assert manifest["metrics"]["params"] == result.params and 0 <= manifest["metrics"]["val_micro_f1"] <= 1


def test_predictions_are_spans_inside_the_text(tagger):
    result, _, _ = tagger
    texts = [json.loads(x)["text"] for x in (SETS / "test.jsonl").read_text().splitlines()[:20]]
    found = TokenClassifier.load(result.model_dir, threads=1).extract(texts)
    assert len(found) == len(texts) and sum(map(len, found)) > 0  # 5 short epochs already tag some
    for text, spans in zip(texts, found):
        for s in spans:
            assert 0 <= s["start"] < s["end"] <= len(text) and s["label"] in LABELS
            assert s["text"] == text[s["start"] : s["end"]] == s["text"].strip() and 0 < s["score"] <= 1
        assert all(a["end"] <= b["start"] for a, b in zip(spans, spans[1:]))


def test_first_sub_word_bio_tags_and_misaligned_spans():
    from transformers import AutoTokenizer

    from slmforge.core.hub import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    tags = bio_tags(["CUR", "AMT", "MER"])
    tag_id = {t: i for i, t in enumerate(tags)}
    text = "Paid £45.20 at Sainsbury's"
    spans = [Span(5, 6, "CUR"), Span(6, 11, "AMT"), Span(15, 26, "MER")]
    ids, labels, misaligned = encode(tok, text, spans, 64, tag_id)
    words = [tags[t] for t in labels if t != -100]
    # paid | £ | 45 . 20 | at | sainsbury ' s   (one tag per word, on its first sub-word)
    assert words == ["O", "B-CUR", "B-AMT", "I-AMT", "I-AMT", "O", "B-MER", "I-MER", "I-MER"]
    assert labels[0] == -100 and labels[-1] == -100 and misaligned == 0  # [CLS], [SEP]
    _, labels, misaligned = encode(tok, "EUR45 please", [Span(0, 3, "CUR")], 64, tag_id)
    assert misaligned == 1  # the span ends inside the word "eur45": the word carries it


def test_bio_decoding_is_lenient_like_seqeval():
    words = [(0, 3, "B-PER", 0.9), (4, 7, "I-PER", 0.7), (8, 9, "O", 1.0), (10, 12, "I-LOC", 0.5),
             (13, 15, "B-LOC", 0.6), (16, 18, "I-ORG", 0.4)]  # fmt: skip
    text = "Ada Ray x in NY Co"
    spans = spans_from_tags(text, words)
    assert [(s["text"], s["label"]) for s in spans] == [("Ada Ray", "PER"), ("in", "LOC"), ("NY", "LOC"),
                                                        ("Co", "ORG")]  # fmt: skip
    assert spans[0]["score"] == pytest.approx(0.8)


def test_long_texts_are_read_in_overlapping_windows():
    """A runner that tags every 'paris' token B-LOC: windows of 16 tokens must find all 30, at the right offsets."""
    from transformers import AutoTokenizer

    from slmforge.core.hub import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    paris = tok.convert_tokens_to_ids("paris")
    tags = bio_tags(["LOC"])

    def run(input_ids, attention_mask):
        logits = np.zeros((*input_ids.shape, len(tags)), dtype=np.float32)
        logits[..., 0] = 1.0
        logits[input_ids == paris] = [0.0, 5.0, 0.0]
        return logits

    text = " ".join(f"Day {i}: we walked around Paris again." for i in range(30))
    (spans,) = TokenClassifier(tok, tags, 16, run, "stub").extract([text])
    starts = [i for i in range(len(text)) if text.startswith("Paris", i)]
    assert [(s["start"], s["end"], s["label"]) for s in spans] == [(i, i + 5, "LOC") for i in starts]


def test_cli_train_predict_and_eval(slm_cli, tmp_path):
    data = _slice(SETS / "train.jsonl", tmp_path / "train.jsonl", 24)
    test = _slice(SETS / "test.jsonl", tmp_path / "test.jsonl", 10)
    out = tmp_path / "model"
    code, stdout, err = slm_cli("classify", "train", "--task", "tokens", "--data", data, "-o", out,
                                "--epochs", "1", "--max-len", "48", "--threads", "1")  # fmt: skip
    assert code == 0, err
    assert "token classifier" in stdout and "val micro P / R / F1" in stdout
    code, stdout, err = slm_cli("classify", "predict", out, "Ada Lovelace flew to Paris on 3 May.", "--json")
    assert code == 0, err
    row = json.loads(stdout.splitlines()[0])
    assert row["text"].startswith("Ada") and isinstance(row["entities"], list)
    report = tmp_path / "report"
    code, stdout, err = slm_cli("eval", out, "--task", "extraction", "--data", test, "--latency-queries", "3",
                                "--threads", "1", "--out", report)  # fmt: skip
    assert code == 0, err
    assert "micro-F1" in stdout and "F1 per label" in stdout
    (row,) = json.loads((report / "eval.json").read_text())["rows"]
    assert row["records"] == 10 and row["json_validity"] is None and 0 <= row["micro_f1"] <= 1
    assert row["scored_labels"] == row["file_labels"] and "predictions" not in row
    preds = list(report.glob("predictions-*.jsonl"))
    assert len(preds) == 1 and len(preds[0].read_text().splitlines()) == 10


@pytest.mark.parametrize(
    "entities, expected",
    [
        ([{"start": 0, "end": 99, "label": "PERSON"}], "is outside the text"),
        ([{"start": 0, "end": 5, "label": "PERSON"}, {"start": 3, "end": 8, "label": "ORG"}], "overlap"),
        ([{"start": 0, "end": 5, "label": "PLANET"}], "unknown label 'PLANET'"),
    ],
)
def test_bad_training_spans_are_one_line_errors(slm_cli, tmp_path, entities, expected):
    data = tmp_path / "bad.jsonl"
    rows = [{"text": "Ada Lovelace wrote it", "entities": [{"start": 0, "end": 12, "label": "PERSON"}]},
            {"text": "Kofi Annan met them", "entities": entities}]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    code, _, err = slm_cli("classify", "train", "--task", "tokens", "--data", data, "-o", out,
                           "--labels", "PERSON,ORG")  # fmt: skip
    assert code != 0 and expected in err and f"{data}:2" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_empty_file_and_other_refusals(slm_cli, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, _, err = slm_cli("classify", "train", "--task", "tokens", "--data", empty, "-o", tmp_path / "o")
    assert code != 0 and "holds no examples" in err and len(err.strip().splitlines()) == 1
    none = tmp_path / "none.jsonl"
    none.write_text(json.dumps({"text": "nothing here", "entities": []}) + "\n")
    code, _, err = slm_cli("classify", "train", "--task", "tokens", "--data", none, "-o", tmp_path / "o")
    assert code != 0 and "no entity spans" in err
    code, _, err = slm_cli("classify", "train", "--task", "tokens", "--data", none, "-o", tmp_path / "o",
                           "--label-col", "x")  # fmt: skip
    assert code != 0 and "--label-col" in err and "not for a token classifier" in err
    code, _, err = slm_cli("classify", "train", "--task", "words", "--data", none, "-o", tmp_path / "o")
    assert code != 0 and "unknown --task" in err
    code, _, err = slm_cli("eval", "smollm2-135m-instruct", "--task", "extraction", "--data", none)
    assert code != 0 and "no entity spans to build a schema from" in err


def test_a_text_classifier_is_not_a_token_classifier(tagger):
    from slmforge.clf.predict import predict

    result, _, _ = tagger
    with pytest.raises(SlmError, match="is a token classifier"):
        predict(result.model_dir, ["hello"])


def test_spacy_baseline_maps_its_labels_and_is_scored_on_shared_ones(tmp_path):
    pytest.importorskip("spacy")
    from slmforge.ship.extraction import evaluate_extraction, parse_label_map

    try:
        row = evaluate_extraction("spacy:en_core_web_sm", str(SETS / "test.jsonl"), latency_queries=3)
    except SlmError as e:
        pytest.skip(str(e))  # spaCy without its English pipeline
    assert row["scored_labels"] == LABELS and row["records"] == 254 and row["params"] is None
    assert 0.3 < row["micro_f1"] < 1 and row["overlap_f1"] >= row["micro_f1"]
    assert row["runtime"].startswith("spacy ") and row["json_validity"] is None
    bank = evaluate_extraction("spacy:en_core_web_sm", str(SETS / "bank_test.jsonl"),
                               spacy_labels="ORG=MERCHANT,DATE", latency_queries=3)  # fmt: skip
    assert bank["scored_labels"] == ["DATE", "MERCHANT"] and len(bank["file_labels"]) == 5
    with pytest.raises(SlmError, match="produces none of the labels"):
        evaluate_extraction("spacy:en_core_web_sm", str(SETS / "bank_test.jsonl"), spacy_labels="NORP=X")
    assert parse_label_map("ORG=MERCHANT, DATE") == {"ORG": "MERCHANT", "DATE": "DATE"}
    with pytest.raises(SlmError, match="SPACY=OURS"):
        parse_label_map("=X")


def test_export_and_quantize_refuse_a_token_classifier(tagger, slm_cli, tmp_path):
    result, _, _ = tagger
    for verb in (
        ["export", result.model_dir, "--format", "onnx"],
        ["quantize", result.model_dir, "--scheme", "int8"],
    ):
        code, _, err = slm_cli(*verb, "-o", tmp_path / verb[0])
        assert code != 0 and "is a token classifier" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / verb[0]).exists()
