"""The engines behind text generation: ONNX Runtime GenAI by default, torch as the reference.

`open_lm(model)` returns an `LM`: the tokenizer, the ids that end a reply, and `step()`, a fresh decode
state (own KV cache) speaking the step interface of `slmforge.infer.generate.complete` (`prefill(ids, max_new)`
then `next(token)`, each returning next-token logits). Everything that generates (`slm generate`, `slm
chat`, `slm eval`, `slm rag ask`, pipelines and the server) goes through it, so they share one decode
loop and give the same greedy output for the same engine.

Backends, chosen by measurement on a 2-core AVX2 CPU (BENCHMARKS.md, `benchmarks/generate.py`):
- `ort`: ONNX Runtime GenAI on a model converted once by its model builder (weight-only int8 or int4
  `MatMulNBits`, fp32 for exactness) and cached under `cache_root()/ort/`. Default on CPU.
- `torch`: plain transformers fp32 (bf16 on GPUs), the reference; the default on CUDA and the fallback
  for what the converter does not support (adapters, GGUF files, unknown architectures).
- `llama.cpp`: a GGUF file (or a model exported to q8_0 GGUF once) through `llama-cpp-python`, when
  installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmforge.core import runtime, workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir

BACKENDS = ("auto", "ort", "torch", "llama.cpp")
PRECISIONS = ("int8", "int4", "fp32")
# Architectures the ONNX Runtime GenAI model builder converts (a subset of its list, the ones we test).
ORT_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "GraniteForCausalLM",
    "SmolLM3ForCausalLM",
)
# int4: asymmetric 4-bit blocks of 32, GPTQ-rewritten; the output head's rows (which the tied embedding shares)
# of the 2,048 tokens most frequent in the calibration text in blocks of 16 (`gptq.split_head`). See build_ort,
# and the sizes, speeds and perplexities in BENCHMARKS.md.
INT4_OPTIONS = {"is_symmetric": "false", "block_size": "32"}
# Every precision: the output head reads only the last position (the builder's `Gather` + `Unsqueeze` before
# it), so a prompt's prefill computes one row of logits, not one per prompt token; `ort_session` undoes it for
# full-sequence logits.
HEAD_OPTIONS = {"prune_lm_head": "true"}
INT4_HEAD_SPLIT = (2048, 16)
# Logits cosine to torch fp32 on the check prompts (mean over positions) below which a conversion is refused.
MIN_COSINE = {"fp32": 0.999, "int8": 0.99, "int4": 0.9}  # mean over positions
# Copied next to the ONNX model so a converted directory loads on its own (`open_lm(dir)`).
STANDALONE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
CHECK_TEXTS = ("The capital of France is", "def fibonacci(n):\n    ")


@dataclass
class LM:
    """A loaded text-generation model on one backend."""

    backend: str
    precision: str
    tokenizer: Any
    eos: list[int]
    max_positions: int | None
    new_step: Callable[[], Any]
    source: str = ""
    info: dict = field(default_factory=dict)
    torch_model: Any = None  # the transformers model, on the torch backend only

    def step(self):
        """A fresh decode state (own KV cache): one per conversation or request."""
        return self.new_step()


def open_lm(
    model: str,
    backend: str = "auto",
    precision: str = "int8",
    threads: int | None = None,
    device: str = "auto",
) -> LM:
    """Load `model` (catalog name, directory, .gguf file or hub id) for generation on `backend`."""
    from slmforge.core import hub

    if backend not in BACKENDS:
        raise SlmError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise SlmError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    threads = runtime.set_threads(threads)
    entry = hub.CATALOG.get(model)
    if entry is not None and entry.kind != "causal-lm":
        raise SlmError(f"{model} is an {entry.kind}, not a model that generates text")
    path = Path(hub.resolve_model(model))
    if path.is_dir():
        from slmforge.lm.finetune import output_dir

        path = output_dir(path)  # a finetune run dir -> its model/ or adapter/
    if (path / "adapter_config.json").exists():
        if backend not in ("auto", "torch"):
            raise SlmError(
                f"{model} is a PEFT adapter: it runs on torch (or `slm merge` it, then any backend)"
            )
        return _open_adapter(path, device)
    if is_ort_dir(path):  # already converted (`slm quantize` / `slm export --format onnx`)
        if backend not in ("auto", "ort"):
            raise SlmError(f"{model} is an ONNX Runtime GenAI model: it runs on the ort backend only")
        made = _manifest(path)
        precision = made.get("precision") or made.get("metrics", {}).get("precision", "?")
        return _load_ort(path, path, precision, threads, "a converted model")
    if backend == "auto":
        backend, why = _auto_backend(path, device, precision)
    else:
        why = "forced"
    if backend == "ort" and why != "forced":
        try:
            return _open_ort(path, precision, threads, why)
        except SlmError as e:  # auto: a model the converter cannot take still runs, on torch
            marker = _failed_marker(path, precision)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(e))
            _note(f"{e}; running on torch instead (`--backend torch` skips the attempt)")
            return _open_torch(str(path), device, f"ONNX Runtime conversion failed: {e}")
    if backend == "ort":
        return _open_ort(path, precision, threads, why)
    if backend == "llama.cpp":
        return _open_llama_cpp(path, threads, why)
    return _open_torch(str(path) if path.exists() else model, device, why)


# Part of a conversion's cache key; it changes with the recipe, so a model cached by an older recipe is rebuilt
# (int4 "gptq4": sequential GPTQ, refitted scales, q/k/v in blocks of 32, the head split by token frequency;
# "fused": gate and up projections in one MatMulNBits; "last": the head reads the last position only).
RECIPES = {"fp32": "-last", "int8": "-fused-last", "int4": "-gptq4-fused-last"}


def cache_root() -> Path:
    """Where converted runtime artifacts live: $SLMFORGE_CACHE, else $SLMFORGE_HOME/cache."""
    return Path(os.environ.get("SLMFORGE_CACHE") or workspace.home() / "cache")


def ort_unsupported(path: Path) -> str | None:
    """Why the ONNX Runtime converter cannot take `path` (None when it can)."""
    if path.is_file():
        return f"{path.name} is a file, not a transformers model directory"
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        return "no config.json (an adapter or not a transformers model)"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("quantization_config"):
        return "the model is already quantised"
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in ORT_ARCHITECTURES:
        return f"architecture {arch} is not supported (supported: {', '.join(ORT_ARCHITECTURES)})"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        return "no weights (*.safetensors) in the directory"
    return None


def ort_model_dir(source: Path, precision: str = "int8") -> Path:
    """The ONNX Runtime GenAI conversion of `source` at `precision`, built once and cached.

    The conversion runs the model builder in a subprocess, writes to a temp dir and is renamed into
    place only after its logits agree with torch fp32 on `CHECK_TEXTS` (cosine in the manifest).
    """
    reason = ort_unsupported(source)
    if reason:
        raise SlmError(f"cannot convert {source} for ONNX Runtime: {reason}")
    _require("onnxruntime_genai", "onnxruntime-genai", "the ort backend")
    dest = cache_root() / "ort" / f"{_fingerprint(source)}-{precision}{RECIPES[precision]}"
    if (dest / "genai_config.json").exists():
        return dest
    build_ort(source, dest, precision)
    return dest


def build_ort(
    source: Path,
    dest: Path,
    precision: str,
    extra: dict | None = None,
    measure: Callable[[Path], dict] | None = None,
    overwrite: bool = False,
    calib: list[str] | None = None,
    int4_method: str = "gptq",
) -> dict:
    """Convert `source` into `dest` (ONNX + genai_config.json + the tokenizer and generation files, so the
    directory stands alone) and verify it; `measure(tmp_dir)` adds metrics before the rename. Returns the
    manifest.

    int4: GPTQ weights (`slmforge.infer.gptq`, calibrated on `calib`, default the Python documentation when
    installed, else the builder's round-to-nearest) in asymmetric 4-bit blocks of 32, except the output head's
    rows of the 2,048 tokens most frequent in the calibration text, in blocks of 16 (the head is the most
    sensitive matrix, and mostly on those rows; the tied embedding reads the same codes): SmolLM2-135M stays
    under 17 % of its fp32 size. (q/k/v in blocks of 16 too cost 6 % of decode speed for 0.4 points of
    perplexity, which the refitted scales more than make up; the whole head in 16 cost 9 % of decode speed.)
    """
    _require("onnx_ir", "onnx-ir", "the ONNX Runtime GenAI model builder")
    started = time.perf_counter()
    _note(f"converting {source.name} for ONNX Runtime ({precision}), once; cached in {dest.parent}")
    with atomic_dir(dest, overwrite=overwrite) as tmp:
        cache = tmp / ".hf-cache"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source)]
        cmd += ["-o", str(tmp), "-p", precision, "-e", "cpu", "-c", str(cache)]
        options = {**HEAD_OPTIONS, **({"shared_embeddings": "true"} if _tied(source) else {})}
        if precision == "int4":
            options.update(INT4_OPTIONS)
        options.update(extra or {})
        if options:
            cmd += ["--extra_options", *[f"{k}={v}" for k, v in options.items()]]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_quiet_env())
        if done.returncode != 0 or not (tmp / "genai_config.json").exists():
            raise SlmError(f"ONNX Runtime conversion of {source} failed: {_cause(done.stderr, done.stdout)}")
        _rmtree(cache)
        gptq_report, fused = _edit_built_model(tmp, source, precision, calib, int4_method)
        for name in STANDALONE_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, tmp / name)
        check = compare_logits(source, tmp)
        if check["cosine_mean"] < MIN_COSINE[precision]:
            raise SlmError(
                f"the {precision} conversion of {source} disagrees with the source "
                f"(mean logits cosine {check['cosine_mean']:.4f} < {MIN_COSINE[precision]})"
            )
        manifest = {
            "source": str(source),
            "precision": precision,
            "builder_options": options,
            **gptq_report,
            "fused_matmuls": fused,
            "verify": check,
            "bytes": _dir_bytes(tmp),
            "seconds": round(time.perf_counter() - started, 1),
        }
        if measure is not None:
            manifest.update(measure(tmp))
        (tmp / workspace.MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _edit_built_model(
    model_dir: Path, source: Path, precision: str, calib: list[str] | None, int4_method: str
) -> tuple[dict, int]:
    """The edits slmforge makes to the builder's model, on one in-memory copy saved once: the int8 shared
    embedding, or the int4 shared-head repair and GPTQ weights; then the gate/up fusion. Returns the GPTQ
    report and the number of fused nodes. fp32 models are left as built (nothing to edit)."""
    import onnx

    if precision not in ("int8", "int4"):
        return {}, 0
    model = onnx.load(str(model_dir / "model.onnx"))
    report = {"int4_method": "rtn"} if precision == "int4" else {}
    if precision == "int8":
        share_int8_embeddings(model)
    if precision == "int4":
        repair_shared_head(model)
    if precision == "int4" and int4_method == "gptq":
        from slmforge.infer import gptq

        texts = calib if calib is not None else gptq.default_calibration_texts()
        if texts:
            report = gptq.requantize_int4(model, source, texts, head_split=INT4_HEAD_SPLIT)
        else:
            _note(
                "no calibration text (the Python docs are not installed): int4 keeps round-to-nearest weights"
            )
    fused = fuse_shared_input_matmuls(model)
    save_onnx_in_place(model, model_dir)
    return report, fused


def share_int8_embeddings(model) -> bool:
    """Let the token embedding read the int8 output head's weights when the model ties them.

    The builder quantises the output head to int8 but keeps a second, fp32 copy of the same matrix for the
    embedding lookup (its quantised lookup is 4-bit only): for SmolLM2-135M that copy is 113 MB of 270.
    Here the lookup gathers the head's int8 rows and scales instead (standard Gather/Cast/Sub/Mul ops;
    MatMulNBits stores symmetric 8-bit weights offset by 128), and the fp32 copy is dropped.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits), None)
    head = next(
        (n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")), None
    )
    if gather is None or head is None or len(head.input) > 3:
        return False
    attrs = onnx_attrs(head)
    table = inits[gather.input[0]]
    if attrs.get("bits") != 8 or list(table.dims) != [attrs["N"], attrs["K"]]:
        return False
    weights, scales = head.input[1], head.input[2]
    ids, out, p = gather.input[1], gather.output[0], "/model/embed_tokens/shared_int8"
    consts = [
        numpy_helper.from_array(np.array(128.0, np.float32), f"{p}/offset"),
        numpy_helper.from_array(np.array([-1], np.int64), f"{p}/last_axis"),
        numpy_helper.from_array(np.array([0, 0, attrs["K"]], np.int64), f"{p}/shape"),
    ]
    nodes = [
        helper.make_node("Gather", [weights, ids], [f"{p}/q"], name=f"{p}/GatherQ"),
        helper.make_node("Cast", [f"{p}/q"], [f"{p}/qf"], name=f"{p}/Cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", [f"{p}/qf", f"{p}/offset"], [f"{p}/centred"], name=f"{p}/Sub"),
        helper.make_node("Gather", [scales, ids], [f"{p}/s"], name=f"{p}/GatherScales"),
        helper.make_node("Unsqueeze", [f"{p}/s", f"{p}/last_axis"], [f"{p}/s1"], name=f"{p}/Unsqueeze"),
        helper.make_node("Mul", [f"{p}/centred", f"{p}/s1"], [f"{p}/rows"], name=f"{p}/Mul"),
        helper.make_node("Reshape", [f"{p}/rows", f"{p}/shape"], [out], name=f"{p}/Reshape"),
    ]
    at = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    graph.initializer.remove(table)
    graph.initializer.extend(consts)
    return True


def fuse_shared_input_matmuls(model) -> int:
    """Merge `MatMulNBits` nodes that read the same input with the same shape and quantisation (the MLP's
    gate and up projections, which the model builder keeps apart) into one wider node and a `Split`.

    The same weights and arithmetic in one kernel call instead of two: ONNX Runtime pays a fixed cost of
    about 25 µs per `MatMulNBits` call at batch 1, which is a fifth of a small model's decode step. Weights,
    scales and zero points all lead with the output axis N, so they concatenate row-wise. The fused node is
    named after its parts (`gate_up_proj`). Edits the ModelProto `model`; returns the number of nodes
    merged away.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    groups: dict[tuple, list] = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits" and all(name in inits for name in node.input[1:]):
            attrs = onnx_attrs(node)
            key = (node.input[0], len(node.input), *sorted((k, v) for k, v in attrs.items() if k != "N"))
            groups.setdefault(key, []).append((node, attrs))
    merged, replace, gone = 0, {}, set()
    for members in (g for g in groups.values() if len(g) > 1):
        nodes = [n for n, _ in members]
        parts = [re.match(r"^(.*)/(\w+)_proj/(MatMul\w*)$", n.name) for n in nodes]
        if all(parts) and len({(m[1], m[3]) for m in parts}) == 1:
            base = f"{parts[0][1]}/{'_'.join(m[2] for m in parts)}_proj"
            name = f"{base}/{parts[0][3]}"
        else:
            base = name = nodes[0].name + "_fused"
        tensors = []
        for j in range(1, len(nodes[0].input)):
            arrays = [numpy_helper.to_array(inits[n.input[j]]) for n in nodes]
            tensors.append(numpy_helper.from_array(np.concatenate(arrays), f"{base}.MatMul.input{j}"))
            gone.update(n.input[j] for n in nodes)
        sizes = [a["N"] for _, a in members]
        tensors.append(numpy_helper.from_array(np.array(sizes, np.int64), f"{base}/split_sizes"))
        out = f"{base}/MatMul/output_0"
        attrs = {**members[0][1], "N": sum(sizes)}
        fused = helper.make_node(
            "MatMulNBits", [nodes[0].input[0], *(t.name for t in tensors[:-1])], [out], name=name,
            domain=nodes[0].domain, **attrs,
        )  # fmt: skip
        split = helper.make_node(
            "Split", [out, tensors[-1].name], [n.output[0] for n in nodes], name=f"{base}/Split", axis=-1
        )
        replace[nodes[0].name] = [fused, split]
        replace.update({n.name: [] for n in nodes[1:]})
        graph.initializer.extend(tensors)
        merged += len(nodes) - 1
    if not merged:
        return 0
    new_nodes = [m for n in graph.node for m in replace.get(n.name, [n])]
    del graph.node[:]
    graph.node.extend(new_nodes)
    for init in [i for i in graph.initializer if i.name in gone]:
        graph.initializer.remove(init)
    return merged


def repair_shared_head(model) -> bool:
    """Point the tied embedding's quantized lookup at the quantized output head's tensors.

    For an asymmetric int4 model, or an int8 head in an int4 model (`matmul_mixed_precision=
    last_matmul:int8`), the model builder (onnxruntime-genai 0.18) writes a `GatherBlockQuantized` embedding
    that reads the fp32 matrix or names tensors the head stores under other names, so ONNX Runtime refuses
    the model (and an fp32 copy would cost 113 MB for SmolLM2-135M). The lookup and the head share one
    matrix: re-point the lookup's data, scales and zero points at the head's and drop what no node reads,
    when the bit width and block size agree and the rows need no padding. Edits the ModelProto `model`.
    """
    graph = model.graph
    gather = next((n for n in graph.node if n.op_type == "GatherBlockQuantized"), None)
    head = next(
        (n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")), None
    )
    if gather is None or head is None:
        return False
    reshape = next((n for n in graph.node if gather.input[0] in n.output and n.op_type == "Reshape"), None)
    want = list(head.input[2:])
    if reshape is not None and reshape.input[0] == head.input[1] and list(gather.input[2:]) == want:
        return False
    g, h = onnx_attrs(gather), onnx_attrs(head)
    if (
        reshape is None
        or g.get("bits") != h["bits"]
        or g.get("block_size") != h["block_size"]
        or h["K"] % h["block_size"]
    ):
        raise SlmError("the model builder wrote an invalid shared embedding that cannot be repaired")
    reshape.input[0] = head.input[1]
    del gather.input[2:]
    gather.input.extend(want)
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return True


def drop_unread(graph, names) -> None:
    """Remove the `Constant` nodes and initialisers among `names` that no node of `graph` reads any more."""
    gone = set(names) - {name for n in graph.node for name in n.input}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in gone]:
        graph.node.remove(node)
    for init in [i for i in graph.initializer if i.name in gone]:
        graph.initializer.remove(init)


def onnx_attrs(node) -> dict:
    """An ONNX node's attributes as {name: value}."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def save_onnx_in_place(model, model_dir: Path) -> None:
    """Write an edited `model.onnx` (+ `model.onnx.data`) of `model_dir`: under temporary names first, then
    re-pointed at the final data file name and swapped in."""
    import onnx

    path, data = model_dir / "model.onnx", model_dir / "model.onnx.data"
    tmp_model, tmp_data = model_dir / "edited.onnx", model_dir / "edited.onnx.data"
    onnx.save(model, str(tmp_model), save_as_external_data=True, location=tmp_data.name, size_threshold=1024)
    del model
    m2 = onnx.load(str(tmp_model), load_external_data=False)
    for t in m2.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = data.name
    data.unlink(missing_ok=True)
    os.replace(tmp_data, data)
    onnx.save(m2, str(path))
    tmp_model.unlink()


def compare_logits(source: Path, ort_dir: Path, texts=CHECK_TEXTS) -> dict:
    """Next-token logits of torch fp32 vs the ONNX model on `texts`: cosine and top-1 agreement."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    ref = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    session = ort_session(ort_dir)
    cosines, top1, diff = [], [], 0.0
    for text in texts:
        ids = tok(text)["input_ids"]
        with torch.inference_mode():
            a = ref(torch.tensor([ids])).logits[0].float().numpy()
        b = ort_logits(session, ids)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        cosines.extend(cos.tolist())
        diff = max(diff, float(np.abs(a - b).max()))
        top1.extend((a.argmax(-1) == b.argmax(-1)).tolist())
    return {
        "cosine_mean": round(float(np.mean(cosines)), 5),
        "cosine_min": round(float(np.min(cosines)), 5),
        "top1_agreement": round(float(np.mean(top1)), 4),
        "max_abs_diff": round(diff, 5),
        "positions": len(cosines),
    }


def verify_rows(made: dict, source: Path) -> dict:
    """`build_ort`'s manifest flattened into the `verify_*` metrics every export and quantization reports."""
    out = {k: v for k, v in made.items() if k != "verify"}
    out.update({f"verify_{k}": v for k, v in made["verify"].items()})
    out["verify_vs"] = f"{source} (torch fp32)"
    out["verify_texts"] = len(CHECK_TEXTS)
    return out


def ort_session(ort_dir: Path, threads: int = 1):
    """A plain ONNX Runtime session on the converted decoder with full-sequence logits (for perplexity and
    the conversion check): a head that reads only the last position (`HEAD_OPTIONS`) is made to read every
    position again, in memory; the weights load from the directory as they are."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    path = Path(ort_dir) / "model.onnx"
    graph = onnx.load(str(path), load_external_data=False)
    if every_position_head(graph):
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(ort_dir))
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    else:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    decoder = json.loads((Path(ort_dir) / "genai_config.json").read_text())["model"]["decoder"]
    session.kv_shape = (decoder["num_key_value_heads"], decoder["head_size"])
    return session


def every_position_head(model) -> bool:
    """Undo the model builder's `prune_lm_head` in the ModelProto `model`: the head's input goes back from
    the last position (`/lm_head/prune/Gather` + `Unsqueeze`) to the whole sequence, and the logits output's
    sequence axis is symbolic again. Returns False (nothing changed) for a head that reads every position."""
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    gather, unsqueeze = nodes.get("/lm_head/prune/Gather"), nodes.get("/lm_head/prune/Unsqueeze")
    if gather is None or unsqueeze is None:
        return False
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == unsqueeze.output[0]:
                node.input[i] = gather.input[0]
    graph.node.remove(gather)
    graph.node.remove(unsqueeze)
    drop_unread(graph, [gather.input[1], unsqueeze.input[1]])  # their index and axis constants
    for out in graph.output:
        if out.name == "logits":
            axis = out.type.tensor_type.shape.dim[1]
            axis.Clear()
            axis.dim_param = "sequence_length"
    return True


def ort_logits(session, ids: list[int]) -> np.ndarray:
    """Logits for every position of `ids` from an `ort_session`, starting from an empty KV cache."""
    x = np.asarray([ids], dtype=np.int64)
    feed = {"input_ids": x, "attention_mask": np.ones_like(x)}
    heads, size = session.kv_shape
    for inp in session.get_inputs():
        if inp.name.startswith("past_key_values"):
            feed[inp.name] = np.zeros((1, heads, 0, size), np.float32)
    return session.run(["logits"], feed)[0][0]


class OrtLogits:
    """Full-sequence logits from a converted decoder, shaped like a transformers model call
    (`model(input_ids=...).logits`), so `slmforge.lm.perplexity.perplexity` scores it unchanged."""

    def __init__(self, ort_dir: Path, threads: int = 1):
        self.session = ort_session(ort_dir, threads)

    def eval(self):
        return self

    def __call__(self, input_ids: torch.Tensor, **_) -> Any:
        rows = [ort_logits(self.session, row.tolist()) for row in input_ids]
        return type("Out", (), {"logits": torch.from_numpy(np.stack(rows))})()


class OrtStep:
    """One decode state on ONNX Runtime GenAI: a Generator (with its own KV cache) per prompt."""

    def __init__(self, model, max_positions: int | None):
        self.model = model
        self.max_positions = max_positions
        self.device = "cpu"
        self.generator = None

    def prefill(self, ids: list[int], max_new: int = 1) -> torch.Tensor:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
        self.generator = og.Generator(self.model, params)
        self.generator.append_tokens(np.asarray([ids], dtype=np.int32))
        return self._logits()

    def next(self, token: int) -> torch.Tensor:
        self.generator.append_tokens(np.asarray([[token]], dtype=np.int32))
        return self._logits()

    def greedy(self) -> int:
        """Pick the most likely next token with GenAI's own search and feed it back (no logits copy)."""
        self.generator.generate_next_token()
        return int(self.generator.get_next_tokens()[0])

    def _logits(self) -> torch.Tensor:
        return torch.from_numpy(np.array(self.generator.get_logits(), dtype=np.float32).reshape(-1))


class OrtBatch:
    """Equal-length prompts decoded together on ONNX Runtime GenAI.

    GenAI only takes tokens from its own search after the prompt, so each step reads the logits, lets the
    caller pick a token per row, and forces that pick by masking every other logit before the search step.
    """

    def __init__(self, model):
        self.model = model
        self.generator = None
        self.rows = 0

    def prefill(self, prompts: list[list[int]], max_new: int) -> torch.Tensor:
        import onnxruntime_genai as og

        if len({len(p) for p in prompts}) != 1:
            raise ValueError("OrtBatch takes prompts of equal length")
        self.rows = len(prompts)
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompts[0]) + max_new, batch_size=self.rows, do_sample=False)
        self.generator = og.Generator(self.model, params)
        self.generator.append_tokens(np.asarray(prompts, dtype=np.int32))
        return self._logits()

    def greedy(self) -> list[int]:
        """Every row's most likely next token, picked and fed back by GenAI's own search."""
        self.generator.generate_next_token()
        return [int(t) for t in self.generator.get_next_tokens()]

    def next(self, tokens: list[int]) -> torch.Tensor:
        shape = np.shape(self.generator.get_logits())
        forced = np.full((self.rows, shape[-1]), -1e9, dtype=np.float32)
        forced[np.arange(self.rows), tokens] = 0.0
        self.generator.set_logits(forced.reshape(shape))
        self.generator.generate_next_token()
        return self._logits()

    def _logits(self) -> torch.Tensor:
        return torch.from_numpy(
            np.array(self.generator.get_logits(), dtype=np.float32).reshape(self.rows, -1)
        )


class LlamaCppStep:
    """One decode state on llama.cpp (llama-cpp-python), for GGUF files."""

    def __init__(self, llm):
        self.llm = llm
        self.max_positions = llm.n_ctx()
        self.device = "cpu"

    def prefill(self, ids: list[int], max_new: int = 1) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(ids)
        return self._logits()

    def next(self, token: int) -> torch.Tensor:
        self.llm.eval([token])
        return self._logits()

    def _logits(self) -> torch.Tensor:  # the last evaluated token's row (llama.cpp keeps only that one)
        row = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))
        return torch.from_numpy(np.array(row, dtype=np.float32))


# ---------------------------------------------------------------- helpers


def _auto_backend(path: Path, device: str, precision: str = "int8") -> tuple[str, str]:
    if runtime.pick_device(device).type == "cuda":
        return "torch", "a GPU is present"
    if path.is_file() and path.suffix == ".gguf":
        if importlib.util.find_spec("llama_cpp") is not None:
            return "llama.cpp", "a GGUF file and llama-cpp-python is installed"
        return "torch", "a GGUF file (llama-cpp-python is not installed)"
    if importlib.util.find_spec("onnxruntime_genai") is None:
        return "torch", "onnxruntime-genai is not installed"
    reason = ort_unsupported(path) if path.exists() else "a hub id (not converted)"
    marker = _failed_marker(path, precision) if not reason else None
    if marker is not None and marker.exists():
        reason = "its ONNX Runtime conversion failed before: " + marker.read_text()
    return ("torch", reason) if reason else ("ort", "fastest measured CPU backend")


def _failed_marker(source: Path, precision: str) -> Path:
    """Records that converting this model failed, so `auto` goes straight to torch next time."""
    return cache_root() / "ort" / f"{_fingerprint(source)}-{precision}.failed"


def is_ort_dir(path: Path) -> bool:
    return path.is_dir() and (path / "genai_config.json").exists()


def _open_ort(path: Path, precision: str, threads: int, why: str) -> LM:
    ort_dir = ort_model_dir(path, precision)
    try:
        return _load_ort(ort_dir, path, precision, threads, why)
    except SlmError:
        _note(f"the cached conversion in {ort_dir} is unreadable; converting again")
        _rmtree(ort_dir)
        return _load_ort(ort_model_dir(path, precision), path, precision, threads, why)


def genai_session_options(threads: int) -> dict:
    """ONNX Runtime session options for a GenAI decoder on `threads` intra-op threads. When the threads take
    every CPU this process may run on, each worker thread is pinned to a CPU of its own, all but the first
    (the calling thread, which computes its own share of each kernel, stays unpinned). On 2 vCPUs that made
    int4 decode about 10 % faster (BENCHMARKS.md). With fewer threads than CPUs nothing is pinned, because
    which CPUs are free is not known."""
    options: dict = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if threads > 1 and len(cpus) == threads:  # ONNX Runtime numbers processors from 1
        options["session.intra_op_thread_affinities"] = ";".join(str(cpu + 1) for cpu in cpus[1:])
    return options


def _load_ort(ort_dir: Path, path: Path, precision: str, threads: int, why: str) -> LM:
    _require("onnxruntime_genai", "onnxruntime-genai", "the ort backend")
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    try:
        config = og.Config(str(ort_dir))
        config.overlay(
            json.dumps({"model": {"decoder": {"session_options": genai_session_options(threads)}}})
        )
        model = og.Model(config)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (RuntimeError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SlmError(f"{ort_dir} is not a loadable ONNX Runtime GenAI model (corrupt?): {first}") from None
    genai = json.loads((ort_dir / "genai_config.json").read_text())["model"]
    own = genai.get("eos_token_id")  # GenAI's search stops a row at these: so must we
    eos = sorted(
        {*_eos_ids(path, tokenizer), *(own if isinstance(own, list) else [own] if own is not None else [])}
    )
    limit = genai.get("context_length")
    info = {"why": why, "model_dir": str(ort_dir), "threads": threads}
    lm = LM("ort", precision, tokenizer, eos, limit, lambda: OrtStep(model, limit), str(path), info)
    lm.info["og_model"] = model
    return lm


def _open_torch(ref: str, device: str, why: str) -> LM:
    from slmforge.infer.generate import TorchStep, eos_token_ids, load

    model, tokenizer = load(ref, device)
    limit = getattr(model.config, "max_position_embeddings", None)
    eos = eos_token_ids(model, tokenizer)
    lm = LM("torch", "fp32", tokenizer, eos, limit, lambda: TorchStep(model), ref, {"why": why})
    lm.torch_model = model
    return lm


def _open_adapter(path: Path, device: str) -> LM:
    """A LoRA adapter (merged into its base for decoding) or a prompt-tuning adapter (its virtual tokens
    are prepended to every prompt's embeddings by the step), on torch."""
    from slmforge.infer.generate import TorchStep, eos_token_ids
    from slmforge.lm.finetune import adapter_type, load_finetuned

    model, tokenizer = load_finetuned(path, device)
    prefix = None
    if adapter_type(path) == "PROMPT_TUNING":
        with torch.inference_mode():
            prefix = model.get_prompt(batch_size=1).detach().to(next(model.parameters()).device)
        model = model.get_base_model()
    limit = getattr(model.config, "max_position_embeddings", None)
    eos = sorted({*eos_token_ids(model, tokenizer), *_eos_ids(path, tokenizer)})
    why = f"a {adapter_type(path).lower().replace('_', '-')} adapter"
    lm = LM("torch", "fp32", tokenizer, eos, limit, lambda: TorchStep(model, prefix), str(path), {"why": why})
    lm.torch_model = model
    return lm


def _open_llama_cpp(path: Path, threads: int, why: str) -> LM:
    _require("llama_cpp", "llama-cpp-python", "the llama.cpp backend")
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    if path.is_file() and path.suffix == ".gguf":
        gguf, tok_ref, tok_kwargs = path, str(path.parent), {"gguf_file": path.name}
    else:
        gguf, tok_ref, tok_kwargs = _gguf_for(path), str(path), {}
    llm = Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, n_batch=512, verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(tok_ref, **tok_kwargs)
    eos = sorted({llm.token_eos(), *_eos_ids(path if path.is_dir() else None, tokenizer)})
    info = {"why": why, "gguf": str(gguf), "threads": threads}
    return LM("llama.cpp", "gguf", tokenizer, eos, llm.n_ctx(), lambda: LlamaCppStep(llm), str(path), info)


def _gguf_for(path: Path) -> Path:
    """A q8_0 GGUF export of the model directory `path`, made once and cached."""
    from slmforge.infer.gguf import export_gguf

    dest = cache_root() / "gguf" / f"{_fingerprint(path)}-q8_0"
    if not (dest / "model.gguf").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(path, dest, "q8_0", overwrite=True)
    return dest / "model.gguf"


def _eos_ids(path: Path | None, tokenizer) -> list[int]:
    ids = [tokenizer.eos_token_id]
    gen = path / "generation_config.json" if path is not None else None
    if gen is not None and gen.exists():
        configured = json.loads(gen.read_text()).get("eos_token_id")
        ids += configured if isinstance(configured, list) else [configured]
    if "<|im_end|>" in getattr(tokenizer, "all_special_tokens", []):
        ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted({i for i in ids if i is not None})


def _manifest(path: Path) -> dict:
    f = path / workspace.MANIFEST
    try:
        return json.loads(f.read_text()) if f.exists() else {}
    except (OSError, ValueError):
        return {}


def _cause(stderr: str, stdout: str) -> str:
    """The line of a failed subprocess's output that says why: its exception, else its last line."""
    lines = [line.strip() for line in (stdout + "\n" + stderr).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1]


def _fingerprint(path: Path) -> str:
    """Identifies a model directory's content cheaply: each file's name, size and mtime (the slmforge.json
    manifest aside: registering a model again does not change its weights)."""
    h = hashlib.sha256(str(path.resolve()).encode())
    if path.is_file():
        st = path.stat()
        return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name != "slmforge.json":
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _tied(source: Path) -> bool:
    return bool(json.loads((source / "config.json").read_text()).get("tie_word_embeddings"))


def _require(module: str, package: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise SlmError(f"{what} needs {package}: run `pip install {package}`")


def _quiet_env() -> dict:
    env = dict(os.environ)
    env.update(
        {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    )
    return env


def _note(message: str) -> None:
    print(f"[slmforge] {message}", file=sys.stderr, flush=True)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
