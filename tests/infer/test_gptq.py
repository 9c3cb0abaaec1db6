"""GPTQ int4: the algorithm against round-to-nearest, the MatMulNBits packing, and the quantized ORT model."""

import json

import numpy as np
import pytest
import torch

from slmforge.core.errors import SlmError
from slmforge.infer import gptq


def _output_error(w, q, h):
    return float(torch.einsum("nk,kl,nl->", q - w, h, q - w))


def _correlated_problem(n=48, k=128, tokens=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5
    x = torch.randn(tokens, k, generator=g) @ mix * torch.linspace(0.2, 3, k)  # correlated, uneven columns
    h = (2 * x.T @ x / tokens).double()
    return torch.randn(n, k, generator=g), h


def test_gptq_beats_round_to_nearest_on_the_layer_output():
    w, h = _correlated_problem()
    codes, scales, zeros = gptq.gptq(w, h, block_size=32)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15 and scales.shape == (48, 4) == zeros.shape
    q = gptq.dequantize(codes, scales, zeros).double()
    s, z = gptq.clip_search(w.double(), 32)
    rtn = gptq.dequantize(gptq._codes(w.double(), s.repeat_interleave(32, 1), z.repeat_interleave(32, 1), 15),
                          s, z).double()  # fmt: skip
    # same grid (scales, zero points), rounding chosen to minimise the output error: a clear gain
    assert _output_error(w.double(), q, h) < 0.6 * _output_error(w.double(), rtn, h)


def test_gptq_rejects_a_width_that_blocks_do_not_divide():
    w, h = _correlated_problem(k=100)
    with pytest.raises(SlmError, match="multiple of the block size"):
        gptq.gptq(w, h, block_size=32)


def test_matmulnbits_packing_round_trips():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (6, 192), generator=g, dtype=torch.uint8)
    zeros = torch.randint(0, 16, (6, 3), generator=g, dtype=torch.uint8)  # an odd number of blocks
    scales = torch.rand(6, 3, generator=g)
    b, z = gptq._pack(codes, zeros, 6, 192, 64)
    assert b.shape == (6, 3, 32) and z.shape == (6, 2)
    c2, s2, z2 = gptq._unpack(b, scales.numpy().reshape(-1), z, 6, 192, 64)
    assert torch.equal(c2, codes) and torch.equal(z2, zeros) and torch.equal(s2, scales)


@pytest.mark.recipe
def test_int4_quantize_runs_gptq_and_the_onnx_weights_are_its_weights(tiny_model_dir, tmp_path):
    import onnx
    from onnx import helper, numpy_helper
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmforge.infer.ort_build import ort_logits, ort_session
    from slmforge.ship.quantize import QuantizeConfig, quantize

    calib, heldout = tmp_path / "calib.txt", tmp_path / "heldout.txt"
    calib.write_text(" ".join(["the cat sees the red house every day."] * 400))
    heldout.write_text(" ".join(["a dog runs to the green tree at night."] * 300))
    out = tmp_path / "q4"
    m = quantize(QuantizeConfig(model=str(tiny_model_dir), out=str(out), scheme="int4", calib=str(calib),
                                heldout=str(heldout)))  # fmt: skip
    assert m["precision"] == "int4" and m["int4_method"] == "gptq"
    assert m["gptq_matrices"] == 11 and m["gptq_kept_rtn"] == []  # 2 layers × qkv, o, gate, up, down; head
    assert m["gptq_block_sizes"] == {"16": 1, "32": 10}  # the head in finer blocks
    assert m["gptq_output_error_vs_rtn"] < 1  # summed over the layers, on the calibration statistics
    assert m["builder_options"]["block_size"] == "32" and m["perplexity"] > 1
    assert json.loads((out / "slmforge.json").read_text())["metrics"]["int4_method"] == "gptq"

    # the ONNX model computes with exactly the GPTQ weights: a torch copy holding the dequantized 4-bit
    # weights matches ONNX Runtime far more closely than the fp32 source does
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    fake = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    proto = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    mods = dict(fake.named_modules())
    for node in proto.graph.node:
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        if node.op_type != "MatMulNBits" or a["bits"] != 4:
            continue
        w = gptq.dequantize(
            *gptq._unpack(*(inits[i] for i in node.input[1:4]), a["N"], a["K"], a["block_size"])
        )
        names = gptq._torch_modules(node.name, mods)
        rows = np.cumsum([0] + [mods[n].weight.shape[0] for n in names])
        with torch.no_grad():
            for name, lo, hi in zip(names, rows[:-1], rows[1:], strict=True):
                mods[name].weight.copy_(w[lo:hi])
    ids = tok("the cat sees the red house")["input_ids"]
    got = ort_logits(ort_session(out), ids)
    with torch.inference_mode():
        want_fake = fake(torch.tensor([ids])).logits[0].numpy()
        want_fp32 = ref(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(got - want_fake).max() < 0.5 * np.abs(got - want_fp32).max()


@pytest.mark.recipe
def test_cli_quantize_bad_method_is_one_line(tiny_model_dir, tmp_path, slm_cli):
    code, _, err = slm_cli(
        "quantize", tiny_model_dir, "--scheme", "int4", "--method", "awq", "--out", tmp_path / "x"
    )
    assert code != 0 and "--method must be gptq or rtn, not 'awq'" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()


def test_sequential_gptq_measures_each_input_after_the_modules_before_it_are_quantized(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    def load():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()

    model = load()
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    batches = torch.randint(0, model.config.vocab_size, (6, 24), generator=torch.Generator().manual_seed(0))
    seen: list[tuple[str, torch.Tensor]] = []

    def fake_quantize(mod, name):  # a stand-in for GPTQ that visibly changes each module's output
        with torch.no_grad():
            mod[name].weight.mul_(0.5).add_(0.01)

    def quantize(name, h):
        seen.append((name, h))
        fake_quantize(dict(model.named_modules()), name)

    gptq.sequential_gptq(model, batches, linears, quantize)
    order = [name for name, _ in seen]
    assert sorted(order) == sorted(linears)
    assert order[0] == "lm_head"  # tied: quantized first, so the layers see the quantized embedding
    assert order[1:8] == [f"model.layers.0.{p}" for p in ("self_attn.q_proj", "self_attn.k_proj",
        "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]  # fmt: skip
    for i, (name, h) in enumerate(seen):
        ref = load()
        mods = dict(ref.named_modules())
        for earlier in order[:i]:
            fake_quantize(mods, earlier)
        expected = gptq.input_hessians(ref, [name], batches)[name]
        assert torch.allclose(h, expected, rtol=1e-4, atol=1e-6), name
    # and the statistics really changed along the way (the test would pass vacuously otherwise)
    fp = gptq.input_hessians(load(), [order[-1]], batches)[order[-1]]
    assert not torch.allclose(seen[-1][1], fp, rtol=1e-2)


def test_refit_scales_lowers_the_output_error_and_recovers_exact_scales():
    w, h = _correlated_problem()
    codes, scales, zeros = gptq.gptq(w, h, block_size=32, refit=False)
    refit = gptq.refit_scales(w, h, codes, zeros, 32, scales)
    before = _output_error(w.double(), gptq.dequantize(codes, scales, zeros).double(), h)
    after = _output_error(w.double(), gptq.dequantize(codes, refit, zeros).double(), h)
    assert after < 0.99 * before  # least squares in the scales: a real, if modest, gain
    # weights that are exactly (code - zero) · scale: the refit finds those scales from wrong ones
    g = torch.Generator().manual_seed(2)
    true = torch.rand(48, 4, generator=g) + 0.1
    exact = gptq.dequantize(codes, true, zeros)
    got = gptq.refit_scales(exact, h.float(), codes, zeros, 32, true * 1.3)
    assert torch.allclose(got, true, rtol=1e-3, atol=1e-4)
    # a block whose codes all sit at the zero point says nothing about its scale: it keeps the given one
    flat = codes.clone()
    flat[0, :32] = zeros[0, 0]
    kept = gptq.refit_scales(w, h.float(), flat, zeros, 32, scales)
    assert float(kept[0, 0]) == pytest.approx(float(scales[0, 0]), rel=1e-4)


@pytest.mark.recipe
def test_split_head_keeps_frequent_rows_finer_and_the_model_exact(tiny_model_dir, tmp_path, monkeypatch):
    """The head split in two row groups (the calibration text's 64 most frequent tokens in blocks of 16, the
    rest in 32): the ONNX model still computes exactly the GPTQ weights, logits in vocabulary order, and the
    tied embedding looks tokens of both groups up in the right table."""
    import onnx
    from onnx import helper, numpy_helper
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmforge.infer import ort_build
    from slmforge.infer.ort_build import ort_logits, ort_session
    from slmforge.ship.quantize import QuantizeConfig, quantize

    monkeypatch.setattr(ort_build, "INT4_HEAD_SPLIT", (64, 16))
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(["the cat sees the red house every day."] * 400))
    out = tmp_path / "q4"
    m = quantize(QuantizeConfig(model=str(tiny_model_dir), out=str(out), scheme="int4", calib=str(calib),
                                heldout=str(calib)))  # fmt: skip
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tok)
    assert m["gptq_head_split"] == {"16": 64, "32": vocab - 64}
    assert m["gptq_block_sizes"] == {"16": 1, "32": 11}

    proto = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    heads = [n for n in proto.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")]
    assert [helper.get_attribute_value(a) for n in heads for a in n.attribute if a.name == "N"] == [
        64,
        vocab - 64,
    ]
    assert len([n for n in proto.graph.node if n.op_type == "GatherBlockQuantized"]) == 2
    order = inits["/lm_head/split/order"]
    fine = np.argsort(order)[:64]  # token ids of the first group
    calib_ids = set(tok(calib.read_text())["input_ids"])
    assert calib_ids <= set(fine.tolist())  # every calibration token is among the fine rows
    # the head's rows, dequantized group by group and put back in vocabulary order
    groups = []
    for n in heads:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        groups.append(
            gptq.dequantize(*gptq._unpack(*(inits[i] for i in n.input[1:4]), a["N"], a["K"], a["block_size"]))
        )
    head = torch.cat(groups)[torch.from_numpy(order.astype(np.int64))]
    fake = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    mods = dict(fake.named_modules())
    with torch.no_grad():
        fake.lm_head.weight.copy_(head)  # tied: the embedding reads the same rows
        for node in proto.graph.node:
            a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            if node.op_type != "MatMulNBits" or node in heads:
                continue
            w = gptq.dequantize(
                *gptq._unpack(*(inits[i] for i in node.input[1:4]), a["N"], a["K"], a["block_size"])
            )
            names = gptq._torch_modules(node.name, mods)
            rows = np.cumsum([0] + [mods[x].weight.shape[0] for x in names])
            for name, lo, hi in zip(names, rows[:-1], rows[1:], strict=True):
                mods[name].weight.copy_(w[lo:hi])
    ids = tok("the cat sees a dog run to the green tree")["input_ids"]
    assert set(ids) - set(fine.tolist()) and set(ids) & set(fine.tolist())  # both groups in the prompt
    got = ort_logits(ort_session(out), ids)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        want = fake(torch.tensor([ids])).logits[0].numpy()
        fp32 = ref(torch.tensor([ids])).logits[0].numpy()
    # a row looked up in the wrong table, or logits out of vocabulary order, would be far off
    assert np.abs(got - want).max() < 0.5 * np.abs(got - fp32).max()
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_frequent_tokens_puts_special_tokens_first_and_breaks_ties_by_id():
    batches = torch.tensor([[5, 5, 5, 7, 7, 9], [9, 9, 9, 9, 3, 3]])  # 9: 5×, 5: 3×, 3 and 7: 2×
    assert gptq.frequent_tokens(batches, vocab=12, count=4, special=[11]).tolist() == [3, 5, 9, 11]
    assert gptq.frequent_tokens(batches, vocab=12, count=6, special=[]).tolist() == [0, 1, 3, 5, 7, 9]
