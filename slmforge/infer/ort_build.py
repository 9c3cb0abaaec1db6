"""Building, verifying and caching ONNX Runtime GenAI models (the `ort` backend's artifacts).

`ort_model_dir(source, precision)` returns the conversion of a transformers directory, built once by
`build_ort` and cached under `cache_root()/ort/`: the model builder runs in a subprocess (weight-only int8 or
int4 `MatMulNBits`, fp32 for exactness), slmforge edits its graph (`slmforge.infer.onnx_graph`; int4 weights
from `slmforge.infer.gptq`), and the result is renamed into place only after its logits agree with torch fp32
(`compare_logits`). `ort_session` and `OrtLogits` give full-sequence logits of a converted decoder, for the
check and for perplexity. `slm quantize` and `slm export --format onnx` call `build_ort` directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir
from slmforge.core.progress import quiet_hf
from slmforge.infer import gptq
from slmforge.infer.model_dirs import cache_root, fingerprint
from slmforge.infer.onnx_graph import (
    every_position_head,
    fuse_shared_input_matmuls,
    repair_shared_head,
    save_onnx_in_place,
    share_int8_embeddings,
)

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
# of the 2,048 tokens most frequent in the calibration text in blocks of 16 (`onnx_graph.split_head`). See build_ort,
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

# Part of a conversion's cache key; it changes with the recipe, so a model cached by an older recipe is rebuilt
# (int4 "gptq4": sequential GPTQ, refitted scales, q/k/v in blocks of 32, the head split by token frequency;
# "fused": gate and up projections in one MatMulNBits; "last": the head reads the last position only).
RECIPES = {"fp32": "-last", "int8": "-fused-last", "int4": "-gptq4-fused-last"}


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
    require_package("onnxruntime_genai", "onnxruntime-genai", "the ort backend")
    dest = cache_root() / "ort" / f"{fingerprint(source)}-{precision}{RECIPES[precision]}"
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
    require_package("onnx_ir", "onnx-ir", "the ONNX Runtime GenAI model builder")
    started = time.perf_counter()
    note(f"converting {source.name} for ONNX Runtime ({precision}), once; cached in {dest.parent}")
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
        texts = calib if calib is not None else gptq.default_calibration_texts()
        if texts:
            report = gptq.requantize_int4(model, source, texts, head_split=INT4_HEAD_SPLIT)
        else:
            note(
                "no calibration text (the Python docs are not installed): int4 keeps round-to-nearest weights"
            )
    fused = fuse_shared_input_matmuls(model)
    save_onnx_in_place(model, model_dir)
    return report, fused


def compare_logits(source: Path, ort_dir: Path, texts=CHECK_TEXTS) -> dict:
    """Next-token logits of torch fp32 vs the ONNX model on `texts`: cosine and top-1 agreement."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_hf():  # the conversion has its own line: no "Loading weights" bar in the middle of it
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


# ---------------------------------------------------------------- helpers


def _cause(stderr: str, stdout: str) -> str:
    """The line of a failed subprocess's output that says why: its exception, else its last line."""
    lines = [line.strip() for line in (stdout + "\n" + stderr).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1]


def _tied(source: Path) -> bool:
    return bool(json.loads((source / "config.json").read_text()).get("tie_word_embeddings"))


def require_package(module: str, package: str, what: str) -> None:
    """SlmError (how to install it) unless the Python module `module` is importable."""
    if importlib.util.find_spec(module) is None:
        raise SlmError(f"{what} needs {package}: run `pip install {package}`")


def _quiet_env() -> dict:
    env = dict(os.environ)
    env.update(
        {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    )
    return env


def note(message: str) -> None:
    """One line to the user on stderr, marked as slmforge's."""
    print(f"[slmforge] {message}", file=sys.stderr, flush=True)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
