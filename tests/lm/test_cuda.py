"""The CUDA path: pretraining on the GPU learns and saves a model the CPU loads, bf16 autocast trains, and
greedy decoding on the GPU equals transformers' own. Skipped where there is no CUDA (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

TINY = dict(depth="2", seq_len=32, batch_size=4, eval_every=4, eval_windows=8, log_every=1)


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def pretrain_on(device: str, precision: str, corpus, tok, out: Path):
    from slmforge.lm.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(data=str(corpus), tokenizer=str(tok), out=str(out), max_steps=12, device=device,
                         precision=precision, **TINY)  # fmt: skip
    return pretrain(cfg, progress=False)


def greedy_matches_transformers(model_dir, device: str) -> None:
    import torch

    from slmforge.infer.engines import TorchStep, eos_token_ids
    from slmforge.infer.generate import GenerateConfig, complete, prompt_ids
    from slmforge.infer.model_dirs import load

    model, tok = load(str(model_dir), device=device)
    eos = eos_token_ids(model, tok)
    cfg = GenerateConfig(model=str(model_dir), max_new_tokens=24, device=device)
    for prompt in ["The cat sees", "Every student reads a long book"]:
        ids = prompt_ids(tok, [{"role": "user", "content": prompt}], chat=True)
        done = complete(TorchStep(model), tok, ids, cfg, eos)
        x = torch.tensor([ids], device=model.device)
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=24,
                             eos_token_id=eos, pad_token_id=eos[0])  # fmt: skip
        new = out[0, len(ids) :].tolist()
        assert done.token_ids == (new[:-1] if new and new[-1] in eos else new)


@pytest.mark.recipe
def test_pretraining_on_cuda_learns_and_the_cpu_loads_the_model(
    tiny_corpus_dir, tiny_tokenizer_dir, tmp_path
):
    from transformers import AutoModelForCausalLM

    result = pretrain_on("cuda", "fp32", tiny_corpus_dir, tiny_tokenizer_dir, tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 13)) and losses[12] < losses[1] - 0.5
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)  # on the CPU
    assert sum(p.numel() for p in model.parameters()) == result.params


@pytest.mark.recipe
def test_bf16_autocast_on_cuda_trains(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    pretrain_on("cuda", "bf16", tiny_corpus_dir, tiny_tokenizer_dir, tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert all(v == v for v in losses.values()) and losses[12] < losses[1]


def test_greedy_on_cuda_equals_transformers(tiny_model_dir):
    greedy_matches_transformers(tiny_model_dir, "cuda")
