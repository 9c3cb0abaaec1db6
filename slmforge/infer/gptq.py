"""GPTQ for the int4 weights of an ONNX Runtime GenAI model (`slm quantize --scheme int4`, `--precision int4`).

The model builder rounds each weight to the nearest of 16 levels (RTN). On SmolLM2-135M that raised held-out
perplexity by 26-37 % (BENCHMARKS.md). GPTQ (Frantar et al., 2023, arXiv:2210.17323) instead quantises one
input column at a time and spreads each column's rounding error over the columns not yet quantised, weighted
by the inverse of the layer's input second moment H = 2/n·XᵀX, measured on calibration text. That minimises
the error of the layer's *output* rather than of its weights. Two standard refinements matter on small
models: columns are taken in order of decreasing H diagonal (act-order), with each block's scale and zero
point fixed beforehand from the original weights (static groups, so `MatMulNBits`' contiguous blocks still
hold); and each block's range is chosen by a clip search that minimises its squared rounding error. Once the
codes are chosen, the scales are solved again by least squares for the least output error (`refit_scales`).
The statistics are gathered sequentially (`sequential_gptq`): each matrix's H is measured on what the matrices
before it, already quantised, produce, so later layers absorb earlier layers' error (on SmolLM2-135M: held-out
perplexity +7.77 % against +8.31 % with every H from the full-precision model, before the refit).

`requantize_int4(model_proto, source, texts)` rewrites the weights, scales and zero points of every 4-bit
`MatMulNBits` node in place (the builder's asymmetric layout; `block_sizes` may make some nodes' blocks
finer), and leaves the rest of the graph as the builder wrote it. Each node is matched to the source's
torch weights (fused q/k/v and gate/up included) and checked against the builder's own RTN weights before
it is replaced, so a layout or naming mismatch keeps the builder's weights instead of corrupting them.

Why ours and not ONNX Runtime's own `quantization.matmul_nbits_quantizer` (1.32): measured side by side on
SmolLM2-135M-Instruct (`benchmarks/gptq_vs_ort.py`, `benchmarks/results/gptq_vs_ort.md`, 2026-12-07, 2 shared
vCPUs), ours has the lowest held-out perplexity, +9.4 % over fp32 against +12.2 % for ORT's best (HQQ) and
+41 to +46 % for its RTN, k-quant and GPTQ. ORT's GPTQ runs the whole model once per calibration window for each
of the 121 distinct MatMul inputs: 374 s for 512 tokens, hours for the 8k ours used in 218 s. Decode speed is
the same within this machine's noise (RTN and GPTQ 1.05×, k-quant 1.12× ours), except HQQ's: its float zero
points take ONNX Runtime's slow `MatMulNBits` path, 1.5 tokens/s (0.04×). Ours is also 2.3-2.4× smaller on disk
(89 MB: the tied embedding reads the head's int4 codes; ORT's models keep the fp32 embedding). The data-free
ones are faster to make (RTN 1.7 s, HQQ 94 s), but none is as good: GPTQ stays ours.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch

from slmforge.core.errors import SlmError
from slmforge.infer.onnx_graph import onnx_attrs, split_head, sync_shared_lookup

BITS = 4
CALIB_SEQUENCES = 128
CALIB_SEQ_LEN = 256
# Fraction of the mean H diagonal added to it. GPTQ's default is 0.01; on SmolLM2-135M (blocks of 32/64,
# 16k calibration tokens) 0.001 gave +7.2 % held-out perplexity against +8.4 % at 0.01 and +11.8 % at 0.1.
DAMP = 0.001


def default_calibration_texts() -> list[str]:
    """The Python documentation's tutorial and HOWTO pages (Debian's python3.11-doc), when installed: general
    technical English and code, apart from the library pages `slm quantize` measures perplexity on."""
    root = Path("/usr/share/doc/python3.11/html/_sources")
    files = sorted((root / "tutorial").glob("*.rst.txt")) + sorted((root / "howto").glob("*.rst.txt"))
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def clip_search(w: torch.Tensor, block_size: int, bits: int = BITS, steps: int = 20):
    """Asymmetric scale and zero point per block of `block_size` input columns of `w` [N, K], each block's
    [min, max] shrunk by 0-19 % where that lowers its squared rounding error. Returns (scales, zeros), [N, K/bs]."""
    n, k = w.shape
    blocks = w.reshape(-1, block_size)
    lo0 = blocks.min(1, keepdim=True).values.clamp(max=0)
    hi0 = blocks.max(1, keepdim=True).values.clamp(min=0)
    qmax = 2**bits - 1
    best = torch.full_like(lo0, float("inf"))
    scales, zeros = torch.ones_like(lo0), torch.zeros_like(lo0)
    for i in range(steps):
        shrink = 1 - 0.01 * i
        s = ((hi0 - lo0) * shrink / qmax).clamp(min=1e-10)
        z = torch.round(-lo0 * shrink / s).clamp(0, qmax)
        err = ((_dequant(_codes(blocks, s, z, qmax), s, z) - blocks) ** 2).sum(1, keepdim=True)
        better = err < best
        best = torch.where(better, err, best)
        scales, zeros = torch.where(better, s, scales), torch.where(better, z, zeros)
    return scales.reshape(n, k // block_size), zeros.reshape(n, k // block_size)


def gptq(w: torch.Tensor, h: torch.Tensor, block_size: int, bits: int = BITS, damp: float | None = None,
         refit: bool = True):  # fmt: skip
    """Quantise `w` [N, K] (float) given its input second moment `h` [K, K]. Returns (codes uint8 [N, K] in
    0..2^bits-1, scales float32 [N, K/bs], zeros uint8 [N, K/bs]); weight ≈ (code - zero) · scale. `refit`:
    once the codes are chosen, re-solve the scales for the least output error (`refit_scales`)."""
    w0, h0 = w.detach().float(), h.detach().float()  # as given, for the refit
    w, h = w0.clone(), h0.clone()
    n, k = w.shape
    if k % block_size:
        raise SlmError(f"GPTQ needs the input width ({k}) to be a multiple of the block size ({block_size})")
    qmax = 2**bits - 1
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scales, zeros = clip_search(w, block_size, bits)
    order = torch.argsort(torch.diag(h), descending=True)
    w, h = w[:, order], h[order][:, order]
    group = order // block_size
    hinv = _inverse_cholesky(h, DAMP if damp is None else damp)
    codes = torch.zeros((n, k), dtype=torch.uint8)
    step = 128
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            g = group[i1 + i]
            s, z = scales[:, g], zeros[:, g]
            q = _codes(w1[:, i], s, z, qmax)
            codes[:, order[i1 + i]] = q.to(torch.uint8)
            err = (w1[:, i] - _dequant(q, s, z)) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if refit:
        scales = refit_scales(w0, h0, codes, zeros, block_size, scales)
    return codes, scales.float(), zeros.to(torch.uint8)


def refit_scales(w: torch.Tensor, h: torch.Tensor, codes: torch.Tensor, zeros: torch.Tensor, block_size: int,
                 scales: torch.Tensor, rows: int = 512) -> torch.Tensor:  # fmt: skip
    """The block scales that minimise the output error (q - w) H (q - w)ᵀ of each row of `w` [N, K] for the
    chosen `codes` and `zeros` [N, K/bs]. q = (code - zero) · scale is linear in a row's scales, so they solve
    the normal equations G s = r, G[a, b] = Σ c_i H_ij c_j over i in block a and j in block b (c the centred
    codes), r[a] = Σ c_i (H w)_i over i in block a; a tiny ridge toward the given `scales` keeps a block that
    the data never reaches (all its codes at the zero point, or dead inputs) as it was. GPTQ picks the codes
    on a grid fixed before its error feedback moves the weights, so the refit lowers the error further
    (on SmolLM2-135M: held-out perplexity +7.51 % against +8.19 % without, same blocks)."""
    n, k = w.shape
    nb = k // block_size
    out = scales.clone().float()
    h = h.float()
    hb = h.reshape(nb, block_size, nb, block_size)
    eye = torch.eye(nb)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        c = codes[r0:r1].float().reshape(-1, nb, block_size) - zeros[r0:r1].float()[..., None]
        g = torch.einsum("rai,aibj,rbj->rab", c, hb, c)
        rhs = torch.einsum("rai,rai->ra", c, (w[r0:r1].float() @ h).reshape(-1, nb, block_size))
        ridge = 1e-6 * torch.diagonal(g, dim1=1, dim2=2).mean(1).clamp(min=1e-12)[:, None]
        sol, info = torch.linalg.solve_ex(g + ridge[..., None] * eye, rhs + ridge * out[r0:r1])
        ok = (info == 0) & torch.isfinite(sol).all(1)  # a row's scales are one joint solution: all or none
        out[r0:r1] = torch.where(ok[:, None], sol, out[r0:r1])
    return out


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp·mean(diag H)·I)⁻¹, raising the damping tenfold while H is not
    numerically positive definite."""
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for _ in range(4):
        try:
            damped = h + damp * torch.mean(torch.diag(h)) * eye
            return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
        except torch.linalg.LinAlgError:
            damp *= 10
    raise SlmError("GPTQ: the calibration statistics are degenerate; give more (or more varied) --calib text")


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """(code - zero) · scale, blocks along the input axis: [N, K] float32."""
    n, k = codes.shape
    nb = scales.shape[1]
    c = codes.float().reshape(n, nb, k // nb)
    return ((c - zeros.float()[..., None]) * scales.float()[..., None]).reshape(n, k)


def input_hessians(model, names: list[str], batches: torch.Tensor) -> dict[str, torch.Tensor]:
    """H = 2/n · XᵀX of the input X of each named nn.Linear of `model` over the token batches [B, T]."""
    mods = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)
    hooks = []
    for name in names:

        def hook(_mod, inp, _out, name=name):
            xtx, rows = _gram(inp[0])
            sums[name] = sums[name] + xtx if name in sums else xtx
            counts[name] += rows

        hooks.append(mods[name].register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for i in range(0, len(batches), 4):
                model(input_ids=batches[i : i + 4], use_cache=False)
    finally:
        for hk in hooks:
            hk.remove()
    return {name: 2 * sums[name] / counts[name] for name in names}


def sequential_gptq(model, batches: torch.Tensor, names: list[str], quantize, on_step=lambda: None) -> None:
    """Call `quantize(name, H)` for each nn.Linear in `names`, in the order the model computes them, with H the
    input second moment on `batches` as the model then stands: `quantize` writes the quantised weights back,
    so each module is calibrated on what the quantised modules before it produce (GPTQ's sequential order).
    Each decoder layer's inputs are cached, so the pass costs about three forwards. A tied output head goes
    first, measured on the full-precision model, because the exported model reads its embedding from the
    same quantised matrix. A model without `model.layers` gets every H from one full-precision pass."""
    mods = dict(model.named_modules())
    layers = getattr(getattr(model, "model", None), "layers", None)
    head = next((n for n, m in mods.items() if m is model.get_output_embeddings()), None)
    todo = list(names)

    def step(name: str, h: torch.Tensor) -> None:
        quantize(name, h)
        todo.remove(name)
        on_step()

    if layers is None:
        hs = input_hessians(model, todo, batches)
        for name in list(todo):
            step(name, hs[name])
        return
    embed = model.get_input_embeddings()
    if head in todo and embed is not None and mods[head].weight is embed.weight:
        whole = [(batches[i : i + 4], {"use_cache": False}) for i in range(0, len(batches), 4)]
        step(head, _layer_hessian(model, mods[head], whole))
    cached = _first_layer_inputs(model, layers[0], batches)
    for layer in layers:
        prefix = next(n for n, m in mods.items() if m is layer) + "."
        for name in [n for n in mods if n.startswith(prefix) and n in todo]:  # definition = forward order
            step(name, _layer_hessian(layer, mods[name], cached))
        with torch.inference_mode():
            cached = [(_hidden(layer(x, **kw)), kw) for x, kw in cached]
    if todo:  # e.g. an untied head: measured on the model with every layer quantised
        hs = input_hessians(model, todo, batches)
        for name in list(todo):
            step(name, hs[name])


class _Stop(Exception):
    """Raised by a hook once it has what it needs, to skip the rest of a forward pass."""


def _first_layer_inputs(model, layer, batches: torch.Tensor) -> list[tuple[torch.Tensor, dict]]:
    """(hidden states, keyword arguments) that `layer` receives for each batch of 4 sequences of `batches`."""
    cached = []

    def hook(_mod, args, kwargs):
        kwargs = dict(kwargs)
        x = args[0] if args else kwargs.pop("hidden_states")
        cached.append((x, kwargs))
        raise _Stop

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            for i in range(0, len(batches), 4):
                try:
                    model(input_ids=batches[i : i + 4], use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return cached


def _layer_hessian(layer, module, cached: list[tuple[torch.Tensor, dict]]) -> torch.Tensor:
    """H = 2/n · XᵀX of `module`'s input inside `layer` (a decoder layer, or the whole model), over the
    cached inputs; the rest of the forward pass, from `module` on, is skipped."""
    total, count = None, 0

    def hook(_mod, inp):
        nonlocal total, count
        xtx, rows = _gram(inp[0])
        total = xtx if total is None else total + xtx
        count += rows
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            for x, kw in cached:
                try:
                    layer(x, **kw)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return 2 * total / count


def _gram(inp: torch.Tensor) -> tuple[torch.Tensor, int]:
    """XᵀX of a module input [..., K] (float32) and its number of rows."""
    x = inp.detach().reshape(-1, inp.shape[-1]).float()
    return x.T @ x, x.shape[0]


def _hidden(out):
    return out[0] if isinstance(out, tuple) else out


def calibration_batches(tokenizer, texts: list[str], n_seq: int | None = None, seq_len: int = CALIB_SEQ_LEN):
    """The texts tokenised, joined by EOS and cut into `n_seq` (default CALIB_SEQUENCES) windows of `seq_len`
    tokens (fewer if the text is short)."""
    n_seq = n_seq or CALIB_SEQUENCES
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        ids += tokenizer(text)["input_ids"] + ([eos] if eos is not None else [])
        if len(ids) >= n_seq * seq_len:
            break
    rows = min(n_seq, len(ids) // seq_len)
    if rows < 1:
        raise SlmError(f"the calibration text holds fewer than {seq_len} tokens; give more text with --calib")
    return torch.tensor(ids[: rows * seq_len]).reshape(rows, seq_len)


def requantize_int4(
    model_proto,
    source: Path,
    texts: list[str],
    block_sizes: dict[str, int] | None = None,
    progress: bool = True,
    head_split: tuple[int, int] | None = None,
) -> dict:
    """Replace the RTN weights of every 4-bit `MatMulNBits` node of the ONNX ModelProto `model_proto` (edited
    in place) by GPTQ's, with input statistics of the torch model `source` on `texts`. `block_sizes` maps a
    projection name (e.g. "down_proj") to its block size when it should differ from the builder's.
    `head_split` (rows, block size): the output head's rows of the `rows` tokens most frequent in the
    calibration text get that finer block size, the rest keep the head's (`onnx_graph.split_head`). Returns what was
    done."""
    from onnx import numpy_helper
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmforge.core.progress import bar

    started = time.perf_counter()
    inits = {i.name: i for i in model_proto.graph.initializer}
    nodes = [
        n
        for n in model_proto.graph.node
        if n.op_type == "MatMulNBits" and onnx_attrs(n).get("bits") == BITS and len(n.input) >= 4
    ]
    if not nodes:
        raise SlmError("the ONNX model has no asymmetric 4-bit MatMulNBits nodes to requantise")
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    weights = dict(torch_model.named_modules())
    plan = {n.name: _torch_modules(n.name, weights) for n in nodes}
    by_input = {mods[0]: node for node in nodes if (mods := plan[node.name])}
    batches = calibration_batches(tokenizer, texts)
    done, kept, err_rtn, err_gptq, blocks = 0, [n.name for n in nodes if not plan[n.name]], 0.0, 0.0, {}
    split: dict[str, list] = {}  # head node name -> its row groups, applied to the graph after the pass

    def quantize_node(name: str, hh: torch.Tensor) -> None:
        """GPTQ the node whose input `name` reads, write it into the ONNX initialisers and the torch model."""
        nonlocal done, err_rtn, err_gptq
        node = by_input[name]
        mods = plan[node.name]
        a = onnx_attrs(node)
        bs, n_out, k = a["block_size"], a["N"], a["K"]
        w = torch.cat([weights[m].weight.detach().float() for m in mods])
        b_init, s_init, z_init = (inits[node.input[i]] for i in (1, 2, 3))
        if tuple(w.shape) != (n_out, k) or k % bs:
            kept.append(node.name)
            return
        arrays = [numpy_helper.to_array(init) for init in (b_init, s_init, z_init)]
        rtn = dequantize(*_unpack(*arrays, n_out, k, bs))
        if float((rtn - w).norm() / w.norm()) > 0.25:  # not the same matrix (or not the expected layout)
            kept.append(node.name)
            return
        new_bs = (block_sizes or {}).get(node.name.split("/")[-2], bs)
        new_bs = new_bs if k % new_bs == 0 else bs
        is_head = node.name.startswith("/lm_head/") and head_split is not None and k % head_split[1] == 0
        fine_rows, fine_bs = head_split if is_head else (0, new_bs)
        if fine_rows >= n_out:  # every row is among the frequent ones
            new_bs = fine_bs
        if 0 < fine_rows < n_out and fine_bs != new_bs:
            fine = frequent_tokens(batches, n_out, fine_rows, tokenizer.all_special_ids)
            rest = torch.ones(n_out, dtype=torch.bool)
            rest[fine] = False
            groups = ((fine, fine_bs), (rest.nonzero()[:, 0], new_bs))
            q, split[node.name] = _gptq_row_groups(w, hh, groups, arrays[1].dtype)
            for _, rows_bs in groups:
                blocks[rows_bs] = blocks.get(rows_bs, 0) + 1
        else:
            codes, scales, zeros = gptq(w, hh, new_bs)
            q = dequantize(codes, scales, zeros)
            _write_node(node, (b_init, s_init, z_init), arrays, codes, scales, zeros, new_bs)
            blocks[new_bs] = blocks.get(new_bs, 0) + 1
        err_rtn += float(torch.einsum("nk,kl,nl->", rtn - w, hh, rtn - w))
        err_gptq += float(torch.einsum("nk,kl,nl->", q - w, hh, q - w))
        with torch.no_grad():  # later layers see this layer's quantised output, as the ONNX model will
            for m, part in zip(mods, q.split([weights[m].weight.shape[0] for m in mods]), strict=True):
                weights[m].weight.copy_(part)
        done += 1

    with bar("GPTQ int4", total=len(by_input), enabled=progress) as b:
        sequential_gptq(torch_model, batches, list(by_input), quantize_node, on_step=lambda: b.advance(1))
    for name, parts in split.items():
        split_head(model_proto, next(n for n in nodes if n.name == name), parts)
    sync_shared_lookup(model_proto)
    return {
        "int4_method": "gptq",
        "gptq_matrices": done,
        "gptq_kept_rtn": kept,
        "gptq_block_sizes": {str(k): v for k, v in sorted(blocks.items())},
        "gptq_head_split": {str(p[4]): len(p[0]) for p in next(iter(split.values()))} if split else None,
        "gptq_calib_tokens": int(batches.numel()),
        "gptq_output_error_vs_rtn": round(err_gptq / err_rtn, 4) if err_rtn else None,
        "gptq_seconds": round(time.perf_counter() - started, 1),
    }


def _gptq_row_groups(w: torch.Tensor, hh: torch.Tensor, groups, scale_dtype) -> tuple[torch.Tensor, list]:
    """GPTQ of each group of rows of `w` (`groups`: (row ids, block size)) on the same H: the dequantised
    matrix and, per group, (token ids, packed codes, scales, packed zero points, block size) for `onnx_graph.split_head`."""
    q, parts = torch.empty_like(w), []
    k = w.shape[1]
    for rows, rows_bs in groups:
        codes, scales, zeros = gptq(w[rows], hh, rows_bs)
        q[rows] = dequantize(codes, scales, zeros)
        packed_b, packed_z = _pack(codes, zeros, len(rows), k, rows_bs)
        parts.append((rows.numpy(), packed_b, scales.numpy().astype(scale_dtype), packed_z, rows_bs))
    return q, parts


def _write_node(node, inits, arrays, codes, scales, zeros, block_size: int) -> None:
    """Put GPTQ's codes, scales and zero points into a `MatMulNBits` node's initialisers (their dtypes kept)."""
    from onnx import numpy_helper

    n_out, k = codes.shape
    packed_b, packed_z = _pack(codes, zeros, n_out, k, block_size)
    for init, old, arr in zip(inits, arrays, (packed_b, scales.numpy(), packed_z), strict=True):
        init.CopyFrom(numpy_helper.from_array(arr.astype(old.dtype), init.name))
    for attr in node.attribute:
        if attr.name == "block_size":
            attr.i = block_size


def frequent_tokens(batches: torch.Tensor, vocab: int, count: int, special: list[int]) -> torch.Tensor:
    """The `count` token ids most frequent in `batches` [B, T], the tokenizer's special tokens first and
    ties (and tokens the text never uses) by lower id, as a sorted LongTensor."""
    freq = torch.bincount(batches.flatten(), minlength=vocab)[:vocab].double()
    freq[[i for i in special if 0 <= i < vocab]] = float("inf")
    return torch.sort(torch.argsort(-freq, stable=True)[:count]).values


def _torch_modules(onnx_name: str, modules: dict) -> list[str]:
    """The torch nn.Linear(s) whose stacked weights a builder `MatMulNBits` node holds ([] when unknown)."""
    if onnx_name.startswith("/lm_head/"):
        return ["lm_head"] if isinstance(modules.get("lm_head"), torch.nn.Linear) else []
    m = re.match(r"^/model/layers\.(\d+)/(attn|mlp)/(\w+)/MatMul", onnx_name)
    if not m:
        return []
    layer, part, proj = m.groups()
    prefix = f"model.layers.{layer}.{'self_attn' if part == 'attn' else 'mlp'}"
    candidates = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    for names in ((proj,), candidates.get(proj, ())):
        full = [f"{prefix}.{p}" for p in names]
        if full and all(isinstance(modules.get(f), torch.nn.Linear) for f in full):
            return full
    return []


def _codes(w, s, z, qmax):
    return torch.clamp(torch.round(w / s) + z, 0, qmax)


def _dequant(q, s, z):
    return (q - z) * s


def _unpack(b: np.ndarray, s: np.ndarray, z: np.ndarray, n: int, k: int, bs: int):
    """MatMulNBits 4-bit layout: B [N, K/bs, bs/2] two codes a byte, low nibble first; zero points [N,
    ceil(nb/2)] likewise; scales [N·nb]."""
    nb = k // bs
    b = b.reshape(n, -1)
    codes = np.empty((n, b.shape[1] * 2), np.uint8)
    codes[:, 0::2], codes[:, 1::2] = b & 0x0F, b >> 4
    zz = z.reshape(n, -1)
    zeros = np.empty((n, zz.shape[1] * 2), np.uint8)
    zeros[:, 0::2], zeros[:, 1::2] = zz & 0x0F, zz >> 4
    return (torch.from_numpy(codes[:, :k]), torch.from_numpy(s.reshape(n, nb).astype(np.float32)),
            torch.from_numpy(zeros[:, :nb]))  # fmt: skip


def _pack(codes: torch.Tensor, zeros: torch.Tensor, n: int, k: int, bs: int):
    c = codes.numpy().astype(np.uint8).reshape(n, k // bs, bs)
    packed_b = (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)
    nb = k // bs
    z = np.zeros((n, nb + nb % 2), np.uint8)
    z[:, :nb] = zeros.numpy()
    packed_z = (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
    return packed_b, packed_z
