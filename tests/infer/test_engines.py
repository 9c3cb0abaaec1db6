"""The generation engines on a tiny random Llama: ONNX Runtime GenAI against the torch reference, batching,
the conversion cache, quantisation and export of causal LMs, and the bad cases."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from slmforge.core.errors import SlmError
from slmforge.infer import engines, model_dirs, onnx_graph, ort_build
from slmforge.infer.generate import GenerateConfig, complete, complete_batch, generate_completion, prompt_ids

PROMPTS = ["The cat sees", "Every student reads a long book", "the old man walks to the sea", "hi"]


def _ids(lm, text):
    return prompt_ids(lm.tokenizer, [{"role": "user", "content": text}], chat=False)


def _greedy(lm, text, n=24):
    cfg = GenerateConfig(model="x", max_new_tokens=n)
    return complete(lm.step(), lm.tokenizer, _ids(lm, text), cfg, lm.eos).token_ids


def test_ort_fp32_greedy_equals_torch(tiny_model_dir):
    ort = engines.open_lm(str(tiny_model_dir), "ort", "fp32", threads=1)
    ref = engines.open_lm(str(tiny_model_dir), "torch", threads=1)
    assert ort.backend == "ort" and ref.backend == "torch"
    assert ort.eos == ref.eos
    for text in PROMPTS:
        assert _greedy(ort, text) == _greedy(ref, text)


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_head_reads_the_last_position_and_ort_session_gives_every_position(tiny_model_dir, precision):
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    made = ort_build.ort_model_dir(tiny_model_dir, precision)
    ids = [1, 5, 9, 17, 33, 65, 12]
    feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
    decoder = json.loads((made / "genai_config.json").read_text())["model"]["decoder"]
    empty = np.zeros((1, decoder["num_key_value_heads"], 0, decoder["head_size"]), np.float32)
    plain = ort.InferenceSession(str(made / "model.onnx"), providers=["CPUExecutionProvider"])
    feed.update({i.name: empty for i in plain.get_inputs() if i.name.startswith("past_key_values")})
    last = plain.run(["logits"], feed)[0]
    every = ort_build.ort_logits(ort_build.ort_session(made), ids)
    assert last.shape[:2] == (1, 1) and every.shape[0] == len(ids)
    np.testing.assert_allclose(last[0, 0], every[-1], atol=1e-4)  # the same head on the same last row
    if precision == "fp32":  # and every row is the torch model's
        ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        with torch.inference_mode():
            want = ref(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(every, want, atol=1e-3)


def test_int8_conversion_is_verified_and_close(tiny_model_dir):
    lm = engines.open_lm(str(tiny_model_dir), "ort", "int8", threads=1)
    made = json.loads((engines.Path(lm.info["model_dir"]) / "slmforge.json").read_text())
    assert made["precision"] == "int8"
    assert made["verify"]["cosine_mean"] >= ort_build.MIN_COSINE["int8"]
    same = sum(
        _greedy(lm, t, 8)[:4] == _greedy(engines.open_lm(str(tiny_model_dir), "torch"), t, 8)[:4]
        for t in PROMPTS
    )
    assert same >= 2  # quantisation may flip a near tie, not most prompts


def test_batch_equals_one_by_one(tiny_model_dir):
    lm = engines.open_lm(str(tiny_model_dir), "ort", "fp32", threads=1)
    cfg = GenerateConfig(model="x", max_new_tokens=16)
    prompts = [_ids(lm, t) for t in ["the cat sees", "the dog sees", "the cat likes", "a small dog"]]
    prompts.append(_ids(lm, "Every student reads a long book"))  # a different length: its own batch
    batched = complete_batch(lm, prompts, cfg)
    singles = [complete(lm.step(), lm.tokenizer, p, cfg, lm.eos) for p in prompts]
    assert [b.token_ids for b in batched] == [s.token_ids for s in singles]
    assert [b.text for b in batched] == [s.text for s in singles]
    assert [b.stopped_at_eos for b in batched] == [s.stopped_at_eos for s in singles]


def test_sampling_is_seeded_and_same_on_both_engines(tiny_model_dir):
    ort = engines.open_lm(str(tiny_model_dir), "ort", "fp32", threads=1)
    ref = engines.open_lm(str(tiny_model_dir), "torch", threads=1)
    cfg = GenerateConfig(model="x", max_new_tokens=12, temperature=0.8, top_k=20, seed=3)
    ids = _ids(ort, "The cat sees")
    a = complete(ort.step(), ort.tokenizer, ids, cfg, ort.eos).token_ids
    b = complete(ref.step(), ref.tokenizer, ids, cfg, ref.eos).token_ids
    assert a == complete(ort.step(), ort.tokenizer, ids, cfg, ort.eos).token_ids
    assert a[:4] == b[:4]  # same sampler on (nearly) the same logits


def test_conversion_is_cached_and_a_corrupt_cache_is_rebuilt(tiny_model_dir, capsys):
    first = ort_build.ort_model_dir(tiny_model_dir, "fp32")
    stamp = (first / "genai_config.json").stat().st_mtime_ns
    assert ort_build.ort_model_dir(tiny_model_dir, "fp32") == first
    assert (first / "genai_config.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    data = first / "model.onnx"
    data.write_bytes(data.read_bytes()[:200])  # truncate the graph
    lm = engines.open_lm(str(tiny_model_dir), "ort", "fp32", threads=1)
    assert "converting again" in capsys.readouterr().err
    assert _greedy(lm, "The cat sees") == _greedy(
        engines.open_lm(str(tiny_model_dir), "torch"), "The cat sees"
    )


def test_a_corrupt_converted_model_is_named(tiny_model_dir, tmp_path):
    out = tmp_path / "q"
    shutil.copytree(ort_build.ort_model_dir(tiny_model_dir, "fp32"), out)
    (out / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(SlmError, match="not a loadable ONNX Runtime GenAI model"):
        engines.open_lm(str(out))


@pytest.mark.recipe
def test_quantize_causal_lm_measures_perplexity_and_size(tiny_model_dir, tmp_path):
    from slmforge.ship.quantize import QuantizeConfig, quantize

    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(["the cat sees the red house every day."] * 400))
    m = quantize(QuantizeConfig(model=str(tiny_model_dir), out=str(tmp_path / "q8"), heldout=str(calib)))
    assert m["precision"] == "int8" and m["format"] == "onnxruntime-genai"
    assert m["perplexity_fp32"] > 1 and abs(m["perplexity_rise_pct"]) < 5
    assert m["verify_cosine_min"] >= 0.98 and 0 < m["size_ratio"] < 1
    lm = engines.open_lm(str(tmp_path / "q8"), threads=1)  # the quantized dir loads on its own
    assert lm.backend == "ort" and lm.precision == "int8" and lm.eos
    with pytest.raises(SlmError, match="already exists"):
        quantize(QuantizeConfig(model=str(tiny_model_dir), out=str(tmp_path / "q8"), heldout=str(calib)))


def test_int8_embedding_shares_the_output_head(tiny_model_dir, tmp_path):
    import onnx

    made = ort_build.ort_model_dir(tiny_model_dir, "int8")
    graph = onnx.load(str(made / "model.onnx"), load_external_data=False).graph
    assert not any(i.name == "model.embed_tokens.weight" for i in graph.initializer)
    assert any(n.name.endswith("shared_int8/GatherQ") for n in graph.node)


@pytest.mark.recipe
def test_export_causal_lm_to_onnx(tiny_model_dir, tmp_path):
    from slmforge.ship.export import ExportConfig, export

    m = export(ExportConfig(model=str(tiny_model_dir), out=str(tmp_path / "onnx"), format="onnx"))
    assert m["precision"] == "fp32" and m["verify_cosine_min"] >= 0.999
    lm = engines.open_lm(str(tmp_path / "onnx"), threads=1)
    ref = engines.open_lm(str(tiny_model_dir), "torch")
    assert _greedy(lm, "The cat sees") == _greedy(ref, "The cat sees")


def test_auto_falls_back_to_torch_and_forced_backends_explain(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(gpt2)
    shutil.copy(tiny_model_dir / "tokenizer.json", gpt2)
    shutil.copy(tiny_model_dir / "tokenizer_config.json", gpt2)
    with pytest.raises(SlmError, match="GPT2LMHeadModel is not supported .*LlamaForCausalLM"):
        engines.open_lm(str(gpt2), "ort")
    assert engines.open_lm(str(gpt2)).backend == "torch"

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime_genai" else real(n, *a)
    )
    assert engines.open_lm(str(tiny_model_dir)).backend == "torch"
    with pytest.raises(SlmError, match="pip install onnxruntime-genai"):
        engines.open_lm(str(tiny_model_dir), "ort")
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    with pytest.raises(SlmError, match="pip install llama-cpp-python"):
        engines.open_lm(str(tiny_model_dir), "llama.cpp")


def test_a_failed_conversion_runs_on_torch_and_is_not_retried(tiny_model_dir, tmp_path, monkeypatch):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    calls = []

    def broken(source, dest, precision, **kw):
        calls.append(source)
        raise SlmError(f"ONNX Runtime conversion of {source} failed: KeyError: 'rope_type'")

    monkeypatch.setattr(ort_build, "build_ort", broken)
    assert engines.open_lm(str(model)).backend == "torch"
    lm = engines.open_lm(str(model))
    assert lm.backend == "torch" and "rope_type" in lm.info["why"] and len(calls) == 1  # not retried
    with pytest.raises(SlmError, match="rope_type"):  # forcing ort still says why
        engines.open_lm(str(model), "ort")
    assert ort_build._cause("Traceback...\n  File x\nKeyError: 'rope_type'\nWARNING: float16", "") == (
        "KeyError: 'rope_type'"
    )
    before = model_dirs.fingerprint(model)
    (model / "slmforge.json").write_text("{}")  # registering a model does not invalidate its conversion
    assert model_dirs.fingerprint(model) == before


def test_bad_backend_precision_and_too_many_threads(tiny_model_dir):
    with pytest.raises(SlmError, match="unknown backend"):
        engines.open_lm(str(tiny_model_dir), "vllm")
    with pytest.raises(SlmError, match="unknown precision"):
        engines.open_lm(str(tiny_model_dir), "ort", "int3")
    with pytest.warns(UserWarning, match="threads asked for"):
        lm = engines.open_lm(str(tiny_model_dir), "ort", "fp32", threads=engines.runtime.free_cores() + 3)
    assert lm.info["threads"] == engines.runtime.free_cores()


def test_generate_and_server_give_the_same_greedy_text(tiny_model_dir):
    """`slm generate` and the server's chat endpoint both run the default engine: same greedy reply."""
    from fastapi.testclient import TestClient

    from slmforge.serve.app import create_app
    from slmforge.serve.config import from_dict

    prompt = "the cat sees the dog"
    done = generate_completion(
        GenerateConfig(model=str(tiny_model_dir), prompt=prompt, max_new_tokens=20, threads=1)
    )
    cfg = from_dict(
        {
            "models": [{"name": "tiny", "kind": "chat", "path": str(tiny_model_dir)}],
            "auth": {"open_on_loopback": ["chat"]},
        }
    )
    with TestClient(create_app(cfg), client=("127.0.0.1", 5000)) as client:
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 20,
                "temperature": 0,
            },
        )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == done.text


@pytest.mark.recipe
def test_adapters_decode_on_torch(tiny_model_dir, tmp_path):
    """A LoRA run decodes as its merged model; a prompt-tuning run prepends its virtual tokens."""
    import torch

    from slmforge.infer.model_dirs import load_finetuned
    from slmforge.lm.finetune import FinetuneConfig, finetune

    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"the cat {v} it.", "completion": v}) + "\n" for v in ["sees", "likes"] * 20
        )
    )
    common = dict(
        seq_len=64,
        batch_size=4,
        threads=1,
        precision="fp32",
        log_every=100,
        checkpoint_every=100,
        max_steps=3,
    )
    for method in ("lora", "prompt-tuning"):
        run = tmp_path / method
        finetune(
            FinetuneConfig(model=str(tiny_model_dir), data=str(data), out=str(run), method=method, **common),
            progress=False,
        )
        lm = engines.open_lm(str(run))
        assert lm.backend == "torch" and method in lm.info["why"]
        ids = _ids(lm, "the cat sees it.")
        got = lm.step().prefill(ids)
        peft_model, _ = load_finetuned(run / "adapter")
        with torch.inference_mode():
            want = peft_model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(got, want, atol=1e-4)
        assert len(_greedy(lm, "the cat likes it.", 6)) <= 6
    with pytest.raises(SlmError, match="PEFT adapter: it runs on torch"):
        engines.open_lm(str(tmp_path / "lora"), "ort")


@pytest.mark.parametrize("bits", [4, 8])
def test_fused_gate_and_up_compute_exactly_what_the_two_nodes_did(tmp_path, bits):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(bits)
    k, bs, n_gate, n_up = 64, 32, 48, 40
    nb, per_byte = k // bs, 8 // bits
    inits, nodes = [], []
    for proj, n in (("gate", n_gate), ("up", n_up)):
        p = f"model.layers.0.mlp.{proj}_proj.MatMul"
        inits += [
            numpy_helper.from_array(rng.integers(0, 256, (n, nb, bs // per_byte), dtype=np.uint8), f"{p}.w"),
            numpy_helper.from_array(rng.uniform(0.01, 0.1, n * nb).astype(np.float32), f"{p}.s"),
        ]
        inputs = ["x", f"{p}.w", f"{p}.s"]
        if bits == 4:  # asymmetric: 4-bit zero points, two a byte
            inits.append(numpy_helper.from_array(rng.integers(0, 256, (n, 1), dtype=np.uint8), f"{p}.z"))
            inputs.append(f"{p}.z")
        nodes.append(helper.make_node("MatMulNBits", inputs, [f"{proj}_out"], f"/model/layers.0/mlp/{proj}_proj/MatMul_Q{bits}",
                                      domain="com.microsoft", K=k, N=n, bits=bits, block_size=bs, accuracy_level=4))  # fmt: skip
    nodes.append(helper.make_node("Mul", ["gate_out", "gate_out"], ["g2"]))  # consumers after both nodes
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("g2", "up_out")], inits,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, str(tmp_path / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    x = {"x": rng.standard_normal((3, k)).astype(np.float32)}
    before = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, x)

    fused = onnx.load(str(tmp_path / "model.onnx"))
    assert onnx_graph.fuse_shared_input_matmuls(fused) == 1
    onnx_graph.save_onnx_in_place(fused, tmp_path)
    mm = [n for n in fused.graph.node if n.op_type == "MatMulNBits"]
    assert [n.name for n in mm] == [f"/model/layers.0/mlp/gate_up_proj/MatMul_Q{bits}"]
    assert len(fused.graph.initializer) == len(inits) // 2 + 1  # each tensor once, plus the split sizes
    after = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, x)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert onnx_graph.fuse_shared_input_matmuls(onnx.load(str(tmp_path / "model.onnx"))) == 0  # none left


def test_converted_models_decode_with_fused_gate_and_up(tiny_model_dir):
    import onnx

    for precision in ("int8", "int4"):
        made = ort_build.ort_model_dir(tiny_model_dir, precision)
        assert json.loads((made / "slmforge.json").read_text())["fused_matmuls"] == 2  # one per layer
        names = [n.name for n in onnx.load(str(made / "model.onnx"), load_external_data=False).graph.node]
        assert sum("gate_up_proj/MatMul" in n for n in names) == 2
        assert not any("/mlp/up_proj/" in n for n in names)


def test_genai_threads_are_pinned_only_when_they_take_every_cpu(monkeypatch):
    monkeypatch.setattr(engines.os, "sched_getaffinity", lambda _pid: {4, 5, 6, 7}, raising=False)
    pinned = engines.genai_session_options(4)
    assert pinned["intra_op_num_threads"] == 4 and pinned["inter_op_num_threads"] == 1
    # the calling thread (CPU 4) stays free; the three workers go to CPUs 5, 6 and 7, numbered from 1
    assert pinned["session.intra_op_thread_affinities"] == "6;7;8"
    assert "session.intra_op_thread_affinities" not in engines.genai_session_options(
        2
    )  # other CPUs may be busy
    assert "session.intra_op_thread_affinities" not in engines.genai_session_options(1)


def test_pinned_genai_model_loads_and_decodes_like_unpinned(tiny_model_dir, monkeypatch):
    """ONNX Runtime takes the affinity entry (a bad one fails the load), and greedy output is unchanged."""
    import os

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    unpinned = engines.open_lm(str(tiny_model_dir), "ort", "fp32", threads=1)
    monkeypatch.setattr(engines.os, "sched_getaffinity", lambda _pid: set(cpus[:2]))
    assert engines.genai_session_options(2)["session.intra_op_thread_affinities"] == str(cpus[1] + 1)
    pinned = engines.open_lm(str(tiny_model_dir), "ort", "fp32", threads=2)
    assert pinned.info["threads"] == 2
    for text in PROMPTS:
        assert _greedy(pinned, text, 8) == _greedy(unpinned, text, 8)
