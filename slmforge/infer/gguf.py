"""GGUF export of Llama-family causal LMs (llama.cpp's format), verified against the source.

`export_gguf(source, out, quant)` writes `out/model.gguf` beside the usual `out/slmforge.json` manifest,
the layout of the ONNX exports: the directory is built in a temp dir and renamed into place only once
the file passed verification, so a failed export leaves nothing at `out`.

Format choices follow llama.cpp's `convert_hf_to_gguf.py` (LlamaModel) so llama.cpp, llama-cpp-python,
Ollama and transformers (`gguf_file=`) all read the file:
- architecture `llama`; tensor names from gguf's own map (`token_embd`, `blk.N.attn_q`, …, `output`);
  `output` is written only when the embeddings are not tied.
- Q and K projections are permuted per head from HF's rotate-half layout to llama.cpp's interleaved
  rotary layout (transformers undoes it on load).
- Quant types: `f32`, `f16`, `q8_0`, `q4_0`. 1-D tensors (the RMS norms) stay F32. A 2-D tensor whose
  rows are not a multiple of the 32-value block falls back to F16. With `q4_0` the output projection
  (or the tied embedding, which doubles as it) is Q8_0: llama.cpp keeps it at 6+ bits too (Q6_K, which
  gguf-py cannot write), as 4-bit logits cost the most quality.
- Tokenizer: byte-level BPE only (`tokenizer.ggml.model = gpt2`): tokens, token types (added special
  tokens are CONTROL), merges from tokenizer.json, bos/eos/pad/unk, add_bos/add_eos as the source
  tokenizer does, and the chat template. The EOS is the chat's end-of-turn token: the
  generation_config.json EOS that the chat template uses (SmolLM2: `<|im_end|>`), so a GGUF runtime
  stops at the end of a reply. The pre-tokenizer is `gpt-2` (plain byte-level regex) or `llama-bpe`.

Verification: the file is read back with gguf's reader, loaded with transformers, and source and GGUF
model run on fixed prompts: per-position logits cosine (mean, min) and top-1 agreement, the same token
ids from both tokenizers, the chat template and EOS intact. Two gates: the GGUF must match the source
with the same rounding applied in torch (cosine >= 0.999 at every position, any quant: this catches
layout and metadata bugs), and f32/f16/q8_0 must match the plain source (mean cosine >= 0.99); q4_0's
quality is reported, not gated. When llama-cpp-python is installed, llama.cpp also loads the file and
continues a prompt.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError

QUANTS = ("f32", "f16", "q8_0", "q4_0")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
GGUF_NAME = "model.gguf"
MIN_COSINE = {"f32": 0.999, "f16": 0.99, "q8_0": 0.99, "q4_0": None}
"""Mean per-position logits cosine (GGUF vs source) an export must reach; q4_0's is only reported (0.85 on
SmolLM2-135M: 4-bit weights cost a model that small that much, in llama.cpp as here)."""
MIN_FAITHFUL = 0.999
"""Least per-position logits cosine between the loaded GGUF and the source with the same rounding applied
in torch: whatever the quant type, anything lower is an export bug (layout, names, metadata)."""

VERIFY_PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea.",
    "In 2024 the company paid 12,345 dollars for 7 servers.",
    "def add(a, b):\n    return a + b",
]
CHAT_PROMPT = [{"role": "user", "content": "What is the boiling point of water?"}]

_PRE_TOKENIZERS = {  # tokenizer.json pre_tokenizer (as compared by _pre_tokenizer) -> tokenizer.ggml.pre
    "ByteLevel(regex)": "gpt-2",
    "Split(llama3)+ByteLevel": "llama-bpe",
}
_LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def export_gguf(
    source_dir: Path,
    out_dir: Path,
    quant: str = "q8_0",
    *,
    overwrite: bool = False,
    prompts: list[str] | None = None,
) -> dict:
    """Write `out_dir/model.gguf` (+ manifest) from the HF Llama in `source_dir`; return the metrics."""
    from slmforge.core import workspace
    from slmforge.core.fsutil import atomic_dir

    if quant not in QUANTS:
        raise SlmError(f"unknown GGUF quant {quant!r}; choose one of: {', '.join(QUANTS)}")
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    config = check_supported(source_dir)
    started = time.perf_counter()
    model, tokenizer = _load_source(source_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        path = tmp / GGUF_NAME
        plan = write_gguf(model, tokenizer, source_dir, path, quant)
        written = time.perf_counter() - started
        check = verify_gguf(model, tokenizer, path, prompts or VERIFY_PROMPTS, plan)
        if check["faithful_cosine_min"] < MIN_FAITHFUL:
            raise SlmError(
                f"the GGUF does not reproduce {source_dir} even allowing for {quant} rounding: logits cosine "
                f"{check['faithful_cosine_min']:.4f} < {MIN_FAITHFUL}; nothing was written"
            )
        floor = MIN_COSINE[quant]
        if floor is not None and check["cosine_mean"] < floor:
            raise SlmError(
                f"the {quant} GGUF disagrees with {source_dir}: mean logits cosine {check['cosine_mean']:.4f} "
                f"< {floor}; nothing was written"
            )
        size = path.stat().st_size
    metrics = {
        "format": "gguf",
        "precision": quant,
        "model_kind": "causal-lm",
        "architecture": config["architectures"][0],
        "file": GGUF_NAME,
        "disk_mb": round(size / 1e6, 1),
        "source_disk_mb": round(_weights_bytes(source_dir) / 1e6, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "tensor_types": dict(sorted(Counter(q.name for q in plan.values()).items())),
        "verify_vs": str(source_dir),
        **{f"verify_{k}": v for k, v in check.items()},
        "write_seconds": round(written, 1),
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    src = workspace.read_manifest(source_dir)
    workspace.register(
        "model", out_dir, source=f"export:{source_dir}", data_hash=src.get("data_hash"), metrics=metrics
    )
    return {"out": str(out_dir), "gguf": str(out_dir / GGUF_NAME), **metrics}


def check_supported(source_dir: Path) -> dict:
    """The source's config.json, if it is an architecture this exporter writes; SlmError otherwise."""
    path = Path(source_dir) / "config.json"
    if not path.exists():
        raise SlmError(f"{source_dir} has no config.json: not a transformers model directory")
    config = json.loads(path.read_text())
    archs = config.get("architectures") or [config.get("model_type") or "unknown"]
    if archs[0] not in SUPPORTED_ARCHITECTURES:
        raise SlmError(
            f"GGUF export does not support {archs[0]} ({source_dir}); supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise SlmError(f"{source_dir}: Llama with attention/MLP biases is not supported by the GGUF export")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise SlmError(
            f"{source_dir}: rope scaling {rope.get('rope_type')!r} is not supported by the GGUF export"
        )
    return config


# ---------------------------------------------------------------- writing


def write_gguf(model, tokenizer, source_dir: Path, path: Path, quant: str) -> dict:
    """Write the GGUF file; return the GGML type each source tensor got ({hf name: GGMLQuantizationType})."""
    import gguf

    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(Path(source_dir).name)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    F = gguf.LlamaFileType
    writer.add_file_type(
        {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0}[quant]
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokenizer, source_dir, cfg.vocab_size)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    plan = {}
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd as the output when there is no `output` tensor
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SlmError(f"no GGUF name for tensor {hf_name} of {source_dir}")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        is_output = name == "output.weight" or (tied and name == "token_embd.weight")
        qtype = tensor_type(data.shape, quant, is_output)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        plan[hf_name] = qtype
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return plan


def tensor_type(shape: tuple[int, ...], quant: str, is_output: bool = False):
    """The GGML type one tensor gets under `quant` (llama.cpp's rules, see the module docstring)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) < 2 or quant == "f32":
        return T.F32
    wanted = {"f16": T.F16, "q8_0": T.Q8_0, "q4_0": T.Q8_0 if is_output else T.Q4_0}[quant]
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    return wanted if shape[-1] % block == 0 else T.F16


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half Q/K rows -> llama.cpp's interleaved pairs, per head (convert_hf_to_gguf's permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(cfg) -> float:
    params = getattr(cfg, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def _add_tokenizer(writer, tokenizer, source_dir: Path, vocab_size: int) -> None:
    import gguf

    tok_json = Path(source_dir) / "tokenizer.json"
    if not tok_json.exists():
        raise SlmError(
            f"{source_dir} has no tokenizer.json: the GGUF export needs a byte-level BPE tokenizer"
        )
    spec = json.loads(tok_json.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    pre = _PRE_TOKENIZERS.get(_pre_tokenizer(spec.get("pre_tokenizer")))
    if model.get("type") != "BPE" or pre is None:
        raise SlmError(
            f"{source_dir}: the GGUF export writes byte-level BPE tokenizers (GPT-2 or Llama-3 style); "
            f"this one is {model.get('type')} with pre-tokenizer {_pre_tokenizer(spec.get('pre_tokenizer'))}"
        )
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size:
        raise SlmError(
            f"{source_dir}: the tokenizer has {len(vocab)} tokens, more than the model's {vocab_size}"
        )
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder

    def token_type(i: int):
        if i not in by_id:
            return gguf.TokenType.UNUSED
        if i in added:
            return gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
        return gguf.TokenType.NORMAL

    # ids the tokenizer lacks (an embedding padded past the vocabulary) become unused [PADi] tokens
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = [token_type(i) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)

    eos = chat_eos_id(tokenizer, source_dir)
    for add, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, eos),
        (writer.add_eot_token_id, eos),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
    ):
        if token_id is not None:
            add(int(token_id))
    plain, with_special = tokenizer("x", add_special_tokens=False).input_ids, tokenizer("x").input_ids
    writer.add_add_bos_token(len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(with_special) > len(plain) and with_special[-1] == tokenizer.eos_token_id)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer(pre: dict | None) -> str:
    """A short label for the tokenizer.json pre-tokenizers this exporter knows, else a description."""
    if not pre:
        return "none"
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "ByteLevel(regex)"
    parts = pre.get("pretokenizers") or []
    if (
        pre.get("type") == "Sequence"
        and len(parts) == 2
        and parts[0].get("type") == "Split"
        and (parts[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT
        and parts[1].get("type") == "ByteLevel"
        and not parts[1].get("use_regex", True)
    ):
        return "Split(llama3)+ByteLevel"
    return pre.get("type", "unknown") + "".join(f"/{p.get('type')}" for p in parts)


def chat_eos_id(tokenizer, source_dir: Path) -> int | None:
    """The token that ends a reply: the generation_config EOS the chat template uses, else its first EOS,
    else the tokenizer's."""
    path = Path(source_dir) / "generation_config.json"
    eos = json.loads(path.read_text()).get("eos_token_id") if path.exists() else None
    candidates = [eos] if isinstance(eos, int) else list(eos or [])
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    for token_id in candidates:
        if template and tokenizer.convert_ids_to_tokens(token_id) in template:
            return token_id
    return candidates[0] if candidates else tokenizer.eos_token_id


# ---------------------------------------------------------------- reading and verifying


def check_gguf(path: str | Path):
    """Read a GGUF file's header, metadata and tensor table; a `gguf.GGUFReader`, or SlmError if broken."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise SlmError(f"{path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise SlmError(
            f"{path} is not a valid GGUF file: it starts with {magic!r}, not the GGUF magic number"
        )
    try:
        reader = gguf.GGUFReader(str(path))
        size = path.stat().st_size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
                raise ValueError(f"tensor {t.name} runs past the end of the file (truncated?)")
        if "general.architecture" not in reader.fields:
            raise ValueError("no general.architecture in the metadata")
    except SlmError:
        raise
    except (
        Exception
    ) as e:  # the reader fails in many ways on garbage: ValueError, IndexError, struct errors …
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SlmError(f"{path} is not a valid GGUF file: truncated or corrupt ({cause})") from None
    return reader


def gguf_metadata(reader) -> dict:
    """The scalar and string metadata of a GGUF (arrays such as the vocabulary left out)."""
    import gguf

    meta = {}
    for key, field in reader.fields.items():
        if not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        meta[key] = field.contents()
    return meta


def load_gguf_hf(path: Path):
    """(model, tokenizer) from a GGUF through transformers' `gguf_file=` loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = Path(path)
    try:  # stderr: transformers' GGUF loader draws its own tqdm bar, which no setting turns off
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise SlmError(f"transformers cannot load {path}: {str(e).splitlines()[0]}") from None
    return model.eval(), tokenizer


def verify_gguf(model, tokenizer, path: Path, prompts: list[str], plan: dict) -> dict:
    """Compare the GGUF at `path` with the source (model, tokenizer) and with the source rounded as `plan`
    says (see MIN_FAITHFUL); SlmError on a structural mismatch."""
    import torch

    reader = check_gguf(path)
    meta = gguf_metadata(reader)
    expect = {"general.architecture": "llama", "llama.block_count": model.config.num_hidden_layers}
    for key, value in expect.items():
        if meta.get(key) != value:
            raise SlmError(f"{path}: {key} is {meta.get(key)!r}, expected {value!r}")

    g_model, g_tok = load_gguf_hf(path)
    rounded = _rounded_copy(model, plan)
    texts = list(prompts)
    if isinstance(tokenizer.chat_template, str):
        texts.append(tokenizer.apply_chat_template(CHAT_PROMPT, tokenize=False, add_generation_prompt=True))
    ref_rows, rounded_rows, gguf_rows = [], [], []
    for text in texts:
        ids = tokenizer(text).input_ids
        if g_tok(text).input_ids != ids:
            raise SlmError(f"{path}: the GGUF tokenizer splits {text[:40]!r} differently from the source")
        with torch.no_grad():
            x = torch.tensor([ids])
            ref_rows.append(model(x).logits[0].double().numpy())
            rounded_rows.append(rounded(x).logits[0].double().numpy())
            gguf_rows.append(g_model(x).logits[0].double().numpy())
    a, r, b = np.concatenate(ref_rows), np.concatenate(rounded_rows), np.concatenate(gguf_rows)
    cos, faithful = _cosines(a, b), _cosines(r, b)

    if g_tok.chat_template != tokenizer.chat_template:
        raise SlmError(f"{path}: the chat template did not survive the GGUF round trip")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    if eos is not None and g_tok.eos_token_id != eos:
        raise SlmError(f"{path}: EOS {eos} in the file but {g_tok.eos_token_id} after loading")
    result = {
        "texts": len(texts),
        "positions": int(a.shape[0]),
        "max_abs_diff": float(np.abs(a - b).max()),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "faithful_cosine_min": float(faithful.min()),
        "tokenizer_roundtrip": True,
        "chat_template_roundtrip": g_tok.chat_template is not None,
        "eos_token": g_tok.convert_ids_to_tokens(eos) if eos is not None else None,
    }
    return result | llama_cpp_check(path, tokenizer, texts[0])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _rounded_copy(model, plan: dict):
    """A copy of `model` with each tensor quantized and dequantized as written (row permutation commutes
    with the rounding: GGML blocks run along rows)."""
    import copy

    import gguf
    import torch

    T = gguf.GGMLQuantizationType
    rounded = copy.deepcopy(model)
    state = rounded.state_dict()
    with torch.no_grad():
        for name, qtype in plan.items():
            w = state[name].float().numpy()
            if qtype == T.F16:
                w = w.astype(np.float16).astype(np.float32)
            elif qtype != T.F32:
                w = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).reshape(w.shape)
            state[name].copy_(torch.from_numpy(w))
    return rounded.eval()


def llama_cpp_check(path: Path, tokenizer, prompt: str) -> dict:
    """When llama-cpp-python is installed: llama.cpp loads the file and greedily continues `prompt`.

    In its own process, so a broken llama.cpp build fails the export with a cause instead of killing it: a
    native llama-cpp-python 0.3.36 build crashed here (SIGSEGV in its AMX matmul, see benchmarks/generate.py)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("llama_cpp") is None:
        return {"llama_cpp": "not installed"}
    code = (
        "import json, sys, llama_cpp\n"
        "llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False)\n"
        "out = llm(sys.argv[2], max_tokens=8, temperature=0.0)\n"
        "print(json.dumps(out['choices'][0]['text']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path), prompt], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [x for x in (done.stderr or "").strip().splitlines() if x.strip()]
        cause = lines[-1] if lines else f"exit code {done.returncode}"
        raise SlmError(f"llama.cpp cannot run {path}: {cause}")
    return {"llama_cpp": "ok", "llama_cpp_continuation": json.loads(done.stdout.strip().splitlines()[-1])}


def _load_source(source_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype="float32").eval()
    return model, tokenizer


def _weights_bytes(source_dir: Path) -> int:
    return sum(os.path.getsize(p) for p in Path(source_dir).glob("*.safetensors")) or sum(
        os.path.getsize(p) for p in Path(source_dir).glob("*.bin")
    )
