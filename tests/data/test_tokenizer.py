"""Byte-level BPE training: a real tokenizer that AutoTokenizer loads, sane compression, clear failures."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.data.tokenizer import CHAT_TEMPLATE, TokenizerConfig, token_byte_lengths, train_tokenizer

TEXTS = [
    "The cat sees the red house every day.",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "Unicode: héllo wörld, naïve café, 日本語のテキスト, emoji 🙂🚀, math ∑ x² ≤ ∞",
    "",
]


def test_autotokenizer_round_trips_and_has_chatml(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id is not None
    assert tok.pad_token_id == tok.eos_token_id
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.chat_template == CHAT_TEMPLATE
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    no_prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
    assert not no_prompt.endswith("assistant\n")


def test_train_reports_sane_bytes_per_token_and_registers(tiny_corpus_dir, tmp_path):
    out = tmp_path / "tok"
    result = train_tokenizer(TokenizerConfig(str(tiny_corpus_dir), str(out), vocab_size=400), progress=False)
    assert result["path"] == str(out.resolve())
    assert 360 <= result["vocab_size"] <= 400
    assert result["bytes_per_token_split"] == "val"
    # a 400-token BPE on repetitive English: well above 1 byte/token, below one whole sentence
    assert 2.0 < result["bytes_per_token"] < 12.0
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == result["vocab_size"]
    [art] = workspace.list_artifacts("tokenizer")
    assert art.path == str(out.resolve()) and art.metrics["bytes_per_token"] == result["bytes_per_token"]
    assert workspace.read_manifest(out)["kind"] == "tokenizer"
    # more merges compress better on the same val text
    bigger = train_tokenizer(TokenizerConfig(str(tiny_corpus_dir), str(tmp_path / "t2"), 512), progress=False)
    assert bigger["bytes_per_token"] > result["bytes_per_token"]


def test_single_text_file(tmp_path):
    corpus = tmp_path / "notes.txt"
    corpus.write_text(
        "\n".join(f"line {i} says the quick brown fox jumps over dog {i % 7}" for i in range(300))
    )
    result = train_tokenizer(
        TokenizerConfig(str(corpus), str(tmp_path / "tok"), vocab_size=300), progress=False
    )
    assert result["bytes_per_token_split"] == "train"
    assert result["vocab_size"] == 300


def test_token_byte_lengths_sum_to_utf8_bytes(tiny_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    lengths = token_byte_lengths(tok)
    assert lengths.shape == (len(tok),)
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert lengths[tok.convert_tokens_to_ids(special)] == 0
    assert (lengths[3:] >= 1).all()
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    # a decoded ASCII text, specials in the stream contribute nothing
    ids = tok("the old man reads a long book<|endoftext|>", add_special_tokens=False)["input_ids"]
    assert int(lengths[ids].sum()) == len(tok.decode(ids, skip_special_tokens=True).encode())
    padded = token_byte_lengths(tok, size=len(tok) + 60)
    assert padded.shape == (len(tok) + 60,) and padded[len(tok) :].sum() == 0


@pytest.mark.parametrize("vocab", ["100", "259", "300000"])
def test_cli_rejects_vocab_out_of_range(slm_cli, tiny_corpus_dir, tmp_path, vocab):
    out = tmp_path / "tok"
    code, stdout, stderr = slm_cli("tokenizer", "train", tiny_corpus_dir, "--vocab-size", vocab, "--out", out)
    assert code == 2
    assert "error:" in stderr and "260" in stderr and "262144" in stderr
    assert "Traceback" not in stderr + stdout
    assert not out.exists()


def test_cli_too_small_corpus_fails_cleanly(slm_cli, tiny_corpus_dir, tmp_path):
    out = tmp_path / "tok"
    code, stdout, stderr = slm_cli(
        "tokenizer", "train", tiny_corpus_dir, "--vocab-size", "8192", "--out", out
    )
    assert code == 2
    [line] = [ln for ln in stderr.splitlines() if ln.strip()]
    assert line.startswith("error:") and "only" in line and "--vocab-size" in line
    assert "Traceback" not in stderr + stdout
    assert list(tmp_path.iterdir()) == []  # neither the out dir nor a temp dir is left behind


def test_cli_trains_and_prints_table(slm_cli, tiny_corpus_dir, tmp_path):
    out = tmp_path / "tok"
    code, stdout, _ = slm_cli("tokenizer", "train", tiny_corpus_dir, "--vocab-size", "300", "--out", out)
    assert code == 0
    assert "bytes/token" in stdout and "300" in stdout
    assert (out / "tokenizer.json").exists()
    code, _, stderr = slm_cli("tokenizer", "train", tiny_corpus_dir, "--vocab-size", "300", "--out", out)
    assert code == 2 and "--overwrite" in stderr
    code, _, _ = slm_cli(
        "tokenizer", "train", tiny_corpus_dir, "--vocab-size", "300", "--out", out, "--overwrite"
    )
    assert code == 0


def test_empty_and_missing_data(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text("\n" + json.dumps({"id": "0", "source": "x", "text": ""}) + "\n")
    with pytest.raises(SlmError, match="no text"):
        train_tokenizer(TokenizerConfig(str(empty), str(tmp_path / "tok"), vocab_size=300), progress=False)
    with pytest.raises(SlmError, match="does not exist"):
        train_tokenizer(TokenizerConfig(str(tmp_path / "nope"), str(tmp_path / "tok"), 300), progress=False)
    with pytest.raises(SlmError, match="train.jsonl"):
        train_tokenizer(TokenizerConfig(str(tmp_path), str(tmp_path / "tok"), 300), progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("this is not json\n")
    with pytest.raises(SlmError, match="bad.jsonl:1"):
        train_tokenizer(TokenizerConfig(str(bad), str(tmp_path / "tok"), 300), progress=False)
    assert not (tmp_path / "tok").exists()
