"""GGUF export of a tiny Llama: reload in transformers (gguf_file=), logits parity, EOS/chat-template round
trip, unsupported architectures and broken files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.infer.gguf import GGUF_NAME, check_gguf, export_gguf, load_gguf_hf, tensor_type
from slmforge.ship.export import ExportConfig, export

REPLY = "The cat sees the red house."


@pytest.fixture(scope="module")
def exports(tiny_model_dir, tmp_path_factory):
    """The tiny model exported at each quant type, through `export()` as the CLI calls it."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome_gguf")))
        for quant in ("f16", "q8_0", "q4_0"):
            cfg = ExportConfig(model=str(tiny_model_dir), out=str(root / quant), format="gguf", quant=quant)
            out[quant] = export(cfg)
    return out


@pytest.fixture(scope="module")
def eos_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model fine-tuned to answer one chat turn with REPLY and then <|im_end|>."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    prompt = tok(text, add_special_tokens=False).input_ids
    reply = tok(REPLY, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.tensor([prompt + reply])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("eos_model") / "model"
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out, prompt


def test_exports_reload_in_transformers_and_agree(exports, tiny_model_dir):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    q8 = exports["q8_0"]
    assert q8["verify_cosine_mean"] >= 0.99 and q8["verify_cosine_min"] >= 0.99
    assert exports["f16"]["verify_cosine_mean"] >= 0.999 and exports["f16"]["verify_top1_agreement"] >= 0.95
    assert exports["q4_0"]["verify_cosine_mean"] >= 0.9  # reported, not enforced, by the exporter
    assert all(m["verify_faithful_cosine_min"] >= 0.999 for m in exports.values())
    sizes = {q: Path(m["gguf"]).stat().st_size for q, m in exports.items()}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]
    assert q8["tensor_types"] == {
        "Q8_0": 15,
        "F32": 5,
    }  # 2 x 7 matrices + embedding; 2 x 2 norms + final norm
    assert exports["q4_0"]["tensor_types"]["Q8_0"] == 1  # the tied embedding doubles as the output head

    # independently of the exporter's own check: reload and compare logits on a fresh text
    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model, gtok = load_gguf_hf(Path(q8["gguf"]))
    text = "A small dog reads a long book in the garden."
    assert gtok(text).input_ids == tok(text).input_ids
    with torch.no_grad():
        ids = torch.tensor([tok(text).input_ids])
        a, b = source(ids).logits[0].numpy(), model(ids).logits[0].numpy()
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.99

    manifest = workspace.read_manifest(q8["out"])
    assert manifest["metrics"]["verify_cosine_mean"] == q8["verify_cosine_mean"]
    assert sorted(p.name for p in Path(q8["out"]).iterdir()) == [GGUF_NAME, workspace.MANIFEST]


def test_metadata_and_tokenizer_survive(exports, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    reader = check_gguf(exports["q8_0"]["gguf"])
    field = {k: f.contents() for k, f in reader.fields.items()}
    assert field["general.architecture"] == "llama"
    assert field["llama.block_count"] == 2 and field["llama.embedding_length"] == 64
    assert field["llama.attention.head_count"] == 4 and field["llama.attention.head_count_kv"] == 2
    assert field["llama.context_length"] == 512 and field["llama.feed_forward_length"] == 128
    assert field["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert field["tokenizer.ggml.model"] == "gpt2" and len(field["tokenizer.ggml.tokens"]) == len(tok)
    assert field["tokenizer.ggml.eos_token_id"] == tok.convert_tokens_to_ids(
        "<|im_end|>"
    )  # generation_config
    assert field["tokenizer.ggml.add_bos_token"] is False
    assert field["tokenizer.chat_template"] == tok.chat_template
    assert "output.weight" not in [t.name for t in reader.tensors]  # tied embeddings

    _, gtok = load_gguf_hf(Path(exports["q8_0"]["gguf"]))
    chat = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sees the sky"}]
    assert gtok.chat_template == tok.chat_template
    assert gtok.apply_chat_template(chat, tokenize=False) == tok.apply_chat_template(chat, tokenize=False)
    assert gtok.eos_token == "<|im_end|>"


def test_round_trip_model_stops_at_eos_by_itself(eos_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir, prompt = eos_model_dir
    m = export_gguf(model_dir, tmp_path / "gguf", "q8_0")
    model, tok = load_gguf_hf(Path(m["gguf"]))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id in (eos, [eos])
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=40)[0, len(prompt) :].tolist()
        ref = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        ref_out = ref.generate(torch.tensor([prompt]), max_new_tokens=40)[0, len(prompt) :].tolist()
    assert len(out) < 40 and out[-1] == eos  # stopped by itself, at the end-of-turn token
    assert out == ref_out
    assert tok.decode(out, skip_special_tokens=True).strip() == REPLY


@pytest.mark.recipe
def test_unsupported_architecture_is_a_clear_error(tmp_path, tiny_model_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300, n_positions=64)
    ).save_pretrained(gpt2)
    with pytest.raises(SlmError, match=r"does not support GPT2LMHeadModel .*supported: LlamaForCausalLM"):
        export(ExportConfig(model=str(gpt2), out=str(tmp_path / "out"), format="gguf"))
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(
        json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
    )
    with pytest.raises(SlmError, match="Qwen2ForCausalLM"):
        export_gguf(qwen, tmp_path / "out", "q8_0")
    with pytest.raises(SlmError, match="unknown GGUF quant 'q3_k'"):
        export_gguf(tiny_model_dir, tmp_path / "out", "q3_k")
    with pytest.raises(SlmError, match="cannot export .* to ONNX: architecture GPT2LMHeadModel"):
        export(ExportConfig(model=str(gpt2), out=str(tmp_path / "out"), format="onnx"))
    assert not (tmp_path / "out").exists()


def test_failed_verification_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from slmforge.infer import gguf as gguf_export

    monkeypatch.setitem(gguf_export.MIN_COSINE, "q8_0", 1.01)  # unreachable: verification must fail
    with pytest.raises(SlmError, match="disagrees.*nothing was written"):
        export_gguf(tiny_model_dir, tmp_path / "out", "q8_0")
    assert list(tmp_path.iterdir()) == []

    # a layout bug (no rotary permutation of Q/K) is caught by the faithfulness check, whatever the quant
    monkeypatch.setattr(gguf_export, "_permute", lambda w, heads: w)
    with pytest.raises(SlmError, match="does not reproduce.*q4_0 rounding"):
        export_gguf(tiny_model_dir, tmp_path / "out", "q4_0")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_gguf_is_a_clear_error(exports, tmp_path):
    good = Path(exports["q8_0"]["gguf"]).read_bytes()
    cases = {
        "garbage": b"not a model at all" * 50,
        "empty": b"",
        "header": good[:20],
        "metadata": good[:4000],
        "half": good[: len(good) // 2],
        "last_byte": good[:-1],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        with pytest.raises(SlmError, match=r"is not a valid GGUF file: \S"):
            check_gguf(path)
    with pytest.raises(SlmError, match="does not exist"):
        check_gguf(tmp_path / "missing.gguf")


def test_tensor_types_follow_llama_cpp_rules():
    import gguf

    T = gguf.GGMLQuantizationType
    assert tensor_type((64,), "q4_0") == T.F32  # norms stay F32
    assert tensor_type((64, 64), "q8_0") == T.Q8_0 and tensor_type((64, 64), "q4_0") == T.Q4_0
    assert tensor_type((64, 64), "q4_0", is_output=True) == T.Q8_0
    assert tensor_type((64, 48), "q8_0") == T.F16  # rows not a multiple of the 32-value block
    assert tensor_type((64, 64), "f16") == T.F16 and tensor_type((64, 64), "f32") == T.F32


@pytest.mark.recipe
def test_cli_export_gguf(slm_cli, tiny_model_dir, tmp_path):
    code, out, err = slm_cli("export", tiny_model_dir, "--out", tmp_path / "g", "--format", "gguf")
    assert code == 0, err
    assert "gguf q8_0" in out and "cosine" in out and (tmp_path / "g" / GGUF_NAME).exists()


def test_a_broken_llama_cpp_fails_the_check_in_one_line_without_taking_the_process_down(
    monkeypatch, tmp_path
):
    """The llama.cpp check runs in a child process: a crash or import failure there is a one-line SlmError."""
    import importlib.util

    from slmforge.infer.gguf import llama_cpp_check

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "llama_cpp" else real(n, *a)
    )
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + bytes(60))  # not loadable, whether or not llama-cpp-python is installed
    with pytest.raises(SlmError, match=r"^llama.cpp cannot run \S+model\.gguf: \S") as e:
        llama_cpp_check(bad, None, "Hello")
    assert "\n" not in str(e.value)
