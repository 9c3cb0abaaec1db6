"""Shared test fixtures: an isolated workspace per test, one torch thread, tiny real inputs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _shared_runtime_cache(tmp_path_factory):
    """Converted runtime artifacts (ONNX Runtime GenAI) are keyed by the model's content: share them
    across the session's tests, so each tiny model converts once."""
    os.environ["SLMFORGE_CACHE"] = str(tmp_path_factory.mktemp("runtime-cache"))


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path_factory, monkeypatch):
    """Every test gets its own SLMFORGE_HOME so the registry and caches never leak between tests."""
    monkeypatch.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome")))
    import torch

    torch.set_num_threads(1)
    yield


# ---------------------------------------------------------------- tiny corpus, tokenizer, model

# fmt: off
_SUBJECTS = ["the cat", "a small dog", "my friend", "the teacher", "our team", "the old man", "a young girl",
             "the river", "this model", "the city", "every student", "the engineer", "a quiet bird"]
_VERBS = ["sees", "likes", "builds", "finds", "reads", "carries", "follows", "writes about", "paints",
          "remembers", "walks to", "talks with", "waits for"]
_OBJECTS = ["the red house", "a long book", "the green field", "some fresh bread", "the blue sky", "a new song",
            "the morning train", "an open window", "the warm sun", "a wooden table", "the last letter",
            "the tall tree", "a cup of tea"]
_TAILS = ["every day", "in the evening", "after lunch", "with great care", "near the sea", "before the rain",
          "without a word", "at the market", "on sunday", "in the garden"]
# fmt: on


def _tiny_docs(n: int, seed: int = 0) -> list[str]:
    """Short English-ish documents from a seeded grammar: enough structure for BPE merges and a tiny LM."""
    import random

    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 5)):
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."
            sentences.append(s[0].upper() + s[1:])
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory):
    """An ingest-style dataset dir (train.jsonl 360 docs, val.jsonl 40 docs), written directly."""
    import json

    root = tmp_path_factory.mktemp("tiny_corpus")
    docs = _tiny_docs(400)
    for split, chunk in (("train", docs[:360]), ("val", docs[360:])):
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, text in enumerate(chunk):
                f.write(json.dumps({"id": f"{split}-{i}", "source": "generated", "text": text}) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_corpus_dir, tmp_path_factory):
    """A 512-token byte-level BPE tokenizer trained on the tiny corpus with slmforge's own trainer."""
    from slmforge.data.tokenizer import TokenizerConfig, train_tokenizer

    out = tmp_path_factory.mktemp("tiny_tokenizer") / "tok"
    with pytest.MonkeyPatch.context() as mp:  # session fixtures run before the per-test workspace exists
        mp.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome_session")))
        train_tokenizer(
            TokenizerConfig(data=str(tiny_corpus_dir), out=str(out), vocab_size=512), progress=False
        )
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_tokenizer_dir, tmp_path_factory):
    """A randomly initialised tiny Llama (hidden 64, 2 layers, 4 heads) saved with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    eos = [tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=eos[0],
        eos_token_id=eos[0],
        pad_token_id=eos[0],
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=eos[0], eos_token_id=eos, pad_token_id=eos[0])
    out = tmp_path_factory.mktemp("tiny_model") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def slm_cli(monkeypatch, capsys):
    """Run `slm ARGS...` in-process through the real entry point; return (exit code, stdout, stderr)."""
    import sys

    from slmforge import cli

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["slm", *map(str, args)])
        capsys.readouterr()
        code = 0
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is; torch is imported only when some are collected."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in gpu:
            item.add_marker(skip)
