"""Our decode loop against transformers' generate on a tiny random Llama: parity, sampling, EOS, streaming."""

from __future__ import annotations

import pytest
import torch

from slmforge.core.errors import SlmError
from slmforge.infer.engines import TorchStep, eos_token_ids
from slmforge.infer.generate import (
    GenerateConfig,
    TextStream,
    chat,
    complete,
    generate,
    generate_completion,
    pick_token,
    prompt_ids,
)
from slmforge.infer.model_dirs import load

PROMPTS = ["The cat sees", "Every student reads a long book", "héllo 🙂"]


def _cfg(model_dir, **kw) -> GenerateConfig:
    kw.setdefault("max_new_tokens", 24)
    return GenerateConfig(model=str(model_dir), threads=1, **kw)


def _hf_greedy(model, tokenizer, ids: list[int], eos: list[int], max_new_tokens: int) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(
        x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new_tokens,
        eos_token_id=eos, pad_token_id=eos[0],
    )  # fmt: skip
    new = out[0, len(ids) :].tolist()
    return new[:-1] if new and new[-1] in eos else new


@pytest.mark.parametrize("use_chat", [True, False])
def test_greedy_equals_transformers_generate(tiny_model_dir, use_chat):
    model, tok = load(str(tiny_model_dir))
    eos = eos_token_ids(model, tok)
    for prompt in PROMPTS:
        cfg = _cfg(tiny_model_dir, prompt=prompt, chat=use_chat, max_new_tokens=32)
        ids = prompt_ids(tok, [{"role": "user", "content": prompt}], chat=use_chat)
        done = complete(TorchStep(model), tok, ids, cfg, eos)
        assert len(done.token_ids) > 0
        assert done.token_ids == _hf_greedy(model, tok, ids, eos, 32)


def test_generate_end_to_end_streams_the_returned_text(tiny_model_dir):
    pieces: list[str] = []
    done = generate_completion(_cfg(tiny_model_dir, prompt="The old man"), on_text=pieces.append)
    _, tok = load(str(tiny_model_dir))
    assert "".join(pieces) == done.text == tok.decode(done.token_ids, skip_special_tokens=True)
    assert done.prompt_tokens > 0 and done.seconds > 0 and len(done.token_ids) <= 24
    assert generate(_cfg(tiny_model_dir, prompt="The old man")) == done.text  # greedy is deterministic


def test_seeded_sampling_is_reproducible(tiny_model_dir):
    sample = dict(prompt="A small dog", temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=20)
    a = generate_completion(_cfg(tiny_model_dir, seed=1, **sample))
    b = generate_completion(_cfg(tiny_model_dir, seed=1, **sample))
    c = generate_completion(_cfg(tiny_model_dir, seed=2, **sample))
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids
    greedy = generate_completion(_cfg(tiny_model_dir, prompt="A small dog", max_new_tokens=20))
    top1 = generate_completion(_cfg(tiny_model_dir, prompt="A small dog", temperature=1.0, top_k=1, seed=3))
    assert top1.token_ids[:20] == greedy.token_ids


def test_pick_token_respects_top_k_and_top_p():
    gen = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert pick_token(logits, 0.0, 0, 1.0, gen) == 0
    assert {pick_token(logits, 1.0, 2, 1.0, gen) for _ in range(200)} == {0, 1}
    assert {pick_token(logits, 1.0, 0, 0.6, gen) for _ in range(200)} == {0, 1}
    assert {pick_token(logits, 1.0, 0, 1e-6, gen) for _ in range(50)} == {0}
    assert {pick_token(logits, 1.0, 0, 1.0, gen) for _ in range(500)} == {0, 1, 2, 3}


def test_generation_stops_at_eos(tiny_model_dir):
    model, tok = load(str(tiny_model_dir))
    eos = eos_token_ids(model, tok)
    ids = prompt_ids(tok, [{"role": "user", "content": "The river"}])
    free = complete(TorchStep(model), tok, ids, _cfg(tiny_model_dir), eos)
    assert not free.stopped_at_eos and len(free.token_ids) == 24
    calls = {"n": 0}

    def force_eos_on_the_sixth_token(module, args, output):  # prefill + 5 steps pass, then <|im_end|> wins
        calls["n"] += 1
        if calls["n"] == 6:
            output[..., eos[-1]] = 1e4
        return output

    handle = model.lm_head.register_forward_hook(force_eos_on_the_sixth_token)
    try:
        pieces: list[str] = []
        done = complete(TorchStep(model), tok, ids, _cfg(tiny_model_dir), eos, on_text=pieces.append)
        calls["n"] = 0
        reference = _hf_greedy(model, tok, ids, eos, 24)
    finally:
        handle.remove()
    assert done.stopped_at_eos and done.token_ids == free.token_ids[:5] == reference
    assert "".join(pieces) == done.text and "<|im_end|>" not in done.text


def test_text_stream_never_splits_a_character(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    text = "naïve café 日本語 🙂🚀 ∑x²"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens here
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == text


def test_chat_keeps_history_and_exits(tiny_model_dir):
    inputs = iter(["hello there", "", "/reset", "what now?", "and then?", "/exit", "never read"])
    streamed: list[str] = []
    history = chat(_cfg(tiny_model_dir, system="Be brief.", max_new_tokens=8), read=lambda _: next(inputs),
                   on_text=streamed.append)  # fmt: skip
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user", "assistant"]
    assert history[1]["content"] == "what now?" and history[3]["content"] == "and then?"
    assert "".join(streamed).count("\n") == 3  # three replies, each ended by a newline
    assert next(inputs) == "never read"
    ended = chat(
        _cfg(tiny_model_dir), read=lambda _: (_ for _ in ()).throw(EOFError), on_text=streamed.append
    )
    assert ended == []


def test_load_and_config_errors(tiny_tokenizer_dir, tmp_path):
    with pytest.raises(SlmError, match="no config.json"):
        load(str(tiny_tokenizer_dir))
    with pytest.raises(SlmError, match="not an existing path"):
        load(str(tmp_path / "nothing"))
    with pytest.raises(SlmError, match="temperature"):
        generate(GenerateConfig(model=str(tmp_path), prompt="x", temperature=-1))
    with pytest.raises(SlmError, match="top-p"):
        generate(GenerateConfig(model=str(tmp_path), prompt="x", top_p=0))


def test_cli_generate_streams_to_stdout(slm_cli, tiny_model_dir):
    expected = generate(_cfg(tiny_model_dir, prompt="The teacher", max_new_tokens=10))
    code, stdout, stderr = slm_cli(
        "generate", tiny_model_dir, "--prompt", "The teacher", "--max-new-tokens", "10", "--threads", "1"
    )
    assert code == 0, stderr
    assert stdout == expected + "\n"
    assert "tok/s" in stderr
    code, stdout, stderr = slm_cli("generate", tiny_model_dir, "--prompt", "x", "--top-k", "-1")
    assert code == 2 and "error:" in stderr and "Traceback" not in stderr


def test_repetition_penalty_only_touches_generated_tokens():
    import torch

    from slmforge.infer.generate import penalise_repeats

    logits = torch.tensor([2.0, -1.0, 3.0, 0.5])
    out = penalise_repeats(logits, [2, 1, 2], 2.0)
    assert out.tolist() == [2.0, -2.0, 1.5, 0.5]  # positive halved, negative doubled, others untouched
    assert logits.tolist() == [2.0, -1.0, 3.0, 0.5]  # a copy
    assert int(torch.argmax(out)) == 0  # the repeated favourite (2) lost to the next best


def test_bad_repetition_penalty_is_one_line(slm_cli, tiny_model_dir):
    from slmforge.core.errors import SlmError
    from slmforge.infer.generate import GenerateConfig, generate

    with pytest.raises(SlmError, match="--repetition-penalty must be above 0"):
        generate(GenerateConfig(model=str(tiny_model_dir), prompt="hi", repetition_penalty=0))
