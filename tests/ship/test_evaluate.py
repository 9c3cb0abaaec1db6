"""slm eval --task perplexity: numbers match a direct computation, bits per byte is tokenizer-fair, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from slmforge.core.errors import SlmError
from slmforge.ship.evaluate import EvalConfig, evaluate


def test_perplexity_matches_a_direct_computation(tiny_model_dir, tiny_corpus_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = evaluate(
        EvalConfig(
            models=[str(tiny_model_dir)],
            data=[str(tiny_corpus_dir)],
            seq_len=32,
            max_tokens=128,
            batch_size=2,
        ),
        progress=False,
    )
    assert len(rows) == 1 and rows[0]["tokens"] == 128
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = []
    for line in (tiny_corpus_dir / "val.jsonl").read_text().splitlines():
        ids += tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(ids) > 129:
            break
    ids = torch.tensor(ids[:129])
    with torch.no_grad():
        losses = [
            model(input_ids=ids[None, i * 32 : i * 32 + 33], labels=ids[None, i * 32 : i * 32 + 33]).loss
            for i in range(4)
        ]
    expected = float(torch.stack(losses).mean())
    assert rows[0]["loss"] == pytest.approx(expected, abs=1e-4)
    assert rows[0]["perplexity"] == pytest.approx(math.exp(expected), rel=1e-4)
    assert 0 < rows[0]["bpb"] < rows[0]["loss"] / math.log(2)  # tokens hold more than one byte each
    assert rows[0]["perplexity_change"] == 0.0


def test_second_model_change_is_relative_to_the_first(tiny_model_dir, tiny_corpus_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.5)  # flatter logits: a different perplexity
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    rows = evaluate(
        EvalConfig(
            models=[str(tiny_model_dir), str(other)], data=[str(tiny_corpus_dir)], seq_len=32, max_tokens=64
        ),
        progress=False,
    )
    assert rows[1]["perplexity_change"] == pytest.approx(rows[1]["perplexity"] / rows[0]["perplexity"] - 1)
    assert rows[1]["perplexity"] != rows[0]["perplexity"]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(task="bleu"), "unknown task"),
        (dict(data=[]), "at least one --data"),
        (dict(data=["/nonexistent.jsonl"]), "does not exist"),
        (dict(seq_len=1), "--seq-len"),
    ],
)
def test_bad_input(kw, message, tiny_model_dir, tiny_corpus_dir):
    cfg = {"models": [str(tiny_model_dir)], "data": [str(tiny_corpus_dir)], **kw}
    with pytest.raises(SlmError, match=message):
        evaluate(EvalConfig(**cfg), progress=False)


def test_malformed_jsonl_names_the_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(SlmError, match=r"bad.jsonl:2"):
        evaluate(EvalConfig(models=[str(tiny_model_dir)], data=[str(bad)]), progress=False)


def test_cli_perplexity_writes_the_report(slm_cli, tiny_model_dir, tiny_corpus_dir, tmp_path):
    out = tmp_path / "report"
    code, stdout, err = slm_cli(
        "eval",
        tiny_model_dir,
        "--data",
        tiny_corpus_dir,
        "--seq-len",
        "32",
        "--max-tokens",
        "64",
        "--out",
        out,
    )
    assert code == 0, err
    assert "bits/byte" in stdout and "+0.0%" in stdout
    (row,) = json.loads((out / "eval.json").read_text())["rows"]
    assert row["tokens"] == 64 and f"{row['bpb']:.4f}" in (out / "eval.md").read_text()
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "predictions.jsonl").exists()
