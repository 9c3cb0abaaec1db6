"""ONNX export and int8 quantization of classifiers: parity with the torch model, recorded in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slmforge.clf.configs import ClassifyTrainConfig
from slmforge.clf.predict import load_classifier, predict
from slmforge.clf.train import train_classifier
from slmforge.core import workspace

FIXTURES = Path(__file__).parents[1] / "fixtures" / "classify"
TEXTS = [
    "I am still waiting for my new card",
    "what is the euro exchange rate",
    "my top-up was declined",
    "hi",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny classifier, its fp32 ONNX export and its int8 quantization (via the CLI's functions)."""
    from slmforge.ship.export import ExportConfig, export
    from slmforge.ship.quantize import QuantizeConfig, quantize

    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome_export")))
        model = train_classifier(
            ClassifyTrainConfig(
                data=str(FIXTURES / "train.csv"),
                out=str(root / "torch"),
                label_col="category",
                epochs=1,
                max_len=32,
                threads=1,
                ship_baseline=False,
                few_shot_below=0,
            ),  # fmt: skip
            progress=False,
        ).model_dir
        onnx = export(ExportConfig(model=model, out=str(root / "onnx")))
        int8 = quantize(QuantizeConfig(model=onnx["out"], out=str(root / "int8")))
    return model, onnx, int8


def test_onnx_logits_match_torch(exported):
    model, onnx, _ = exported
    assert onnx["verify_max_abs_diff"] < 1e-4 and onnx["verify_top1_agreement"] == 1.0
    torch_clf, onnx_clf = load_classifier(model, threads=1), load_classifier(onnx["out"], threads=1)
    assert onnx_clf.runtime == "onnxruntime"
    for batch in (TEXTS, TEXTS[:1]):  # padded batch and a single unpadded text
        assert np.abs(torch_clf.logits(batch) - onnx_clf.logits(batch)).max() < 1e-4
    assert [r["label"] for r in predict(onnx["out"], TEXTS)] == [r["label"] for r in predict(model, TEXTS)]
    manifest = workspace.read_manifest(onnx["out"])
    assert manifest["metrics"]["verify_max_abs_diff"] == onnx["verify_max_abs_diff"]
    assert json.loads((Path(onnx["out"]) / "classifier.json").read_text())["labels"][0] == "card_arrival"


def test_int8_agrees_with_fp32_and_is_smaller(exported):
    _, onnx, int8 = exported
    import onnx as onnx_lib

    assert int8["precision"] == "int8" and int8["scheme"] == "ort-dynamic-uint8-per-channel-encoder-matmuls"
    assert int8["verify_cosine_mean"] > 0.95 and int8["verify_top1_agreement"] >= 0.9
    assert int8["disk_mb"] < 0.8 * int8["source_disk_mb"]  # the encoder's MatMuls are int8, embeddings fp32
    nodes = onnx_lib.load(str(Path(int8["out"]) / "model.onnx")).graph.node
    quantized = [n.name for n in nodes if n.op_type == "MatMulInteger"]
    assert len(quantized) >= 6 and not any("classifier" in n for n in quantized)  # the head stays fp32
    assert any(n.op_type in ("Gemm", "MatMul") and "classifier" in n.name for n in nodes)
    clf = load_classifier(int8["out"], threads=1)
    assert clf.params() == onnx["params"]  # counts the source's parameters, not the scale tensors


@pytest.mark.recipe
def test_cli_export_and_quantize_torch_dir_directly(exported, slm_cli, tmp_path):
    model, _, _ = exported
    code, out, err = slm_cli("quantize", model, "--out", tmp_path / "q", "--scheme", "int8")
    assert code == 0, err
    assert "top-1 agreement" in out and (tmp_path / "q" / "model.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the fp32 step left nothing behind


@pytest.mark.parametrize(
    "args, expected",
    [
        (("export", "{model}", "--out", "{tmp}/x", "--format", "tflite"), "unknown format 'tflite'"),
        (("quantize", "{model}", "--out", "{tmp}/x", "--scheme", "int3"), "unknown scheme 'int3'"),
        (("export", "{gpt2}", "--out", "{tmp}/x"), "architecture GPT2LMHeadModel is not supported"),
        (("quantize", "{int8}", "--out", "{tmp}/x"), "already quantized"),
    ],
    ids=["format", "scheme", "causal-lm-architecture", "requantize"],
)
def test_bad_export_requests(exported, slm_cli, tmp_path, args, expected):
    from transformers import GPT2Config, GPT2LMHeadModel

    model, _, int8 = exported
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100, n_positions=32)
    ).save_pretrained(gpt2)
    filled = [a.format(model=model, tmp=tmp_path, gpt2=gpt2, int8=int8["out"]) for a in args]
    code, _, err = slm_cli(*filled)
    assert code == 2 and expected in err, err
    assert not (tmp_path / "x").exists()
