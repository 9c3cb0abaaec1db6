"""The engines behind text generation: ONNX Runtime GenAI by default, torch as the reference.

`open_lm(model)` returns an `LM`: the tokenizer, the ids that end a reply, and `step()`, a fresh decode
state (own KV cache) speaking the step interface of `slmforge.infer.generate.complete` (`prefill(ids, max_new)`
then `next(token)`, each returning next-token logits). Everything that generates (`slm generate`, `slm
chat`, `slm eval`, `slm rag ask`, pipelines and the server) goes through it, so they share one decode
loop and give the same greedy output for the same engine.

Backends, chosen by measurement on a 2-core AVX2 CPU (BENCHMARKS.md, `benchmarks/generate.py`):
- `ort`: ONNX Runtime GenAI on a model converted once by its model builder (weight-only int8 or int4
  `MatMulNBits`, fp32 for exactness) and cached under `cache_root()/ort/` (`slmforge.infer.ort_build`).
  Default on CPU.
- `torch`: plain transformers fp32 (bf16 on GPUs), the reference; the default on CUDA and the fallback
  for what the converter does not support (adapters, GGUF files, unknown architectures).
- `llama.cpp`: a GGUF file (or a model exported to q8_0 GGUF once) through `llama-cpp-python`, when
  installed.
What a model reference may be (catalog name, run dir, adapter, GGUF, converted dir) is `slmforge.infer.model_dirs`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slmforge.core import runtime
from slmforge.core.errors import SlmError
from slmforge.infer import ort_build
from slmforge.infer.gguf import export_gguf
from slmforge.infer.model_dirs import (
    adapter_type,
    cache_root,
    fingerprint,
    is_ort_dir,
    load,
    load_finetuned,
    read_manifest,
    resolve_causal_lm,
)
from slmforge.infer.ort_build import note, ort_unsupported, require_package

BACKENDS = ("auto", "ort", "torch", "llama.cpp")
PRECISIONS = ("int8", "int4", "fp32")


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
    if backend not in BACKENDS:
        raise SlmError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise SlmError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    threads = runtime.set_threads(threads)
    path = resolve_causal_lm(model)  # a finetune run dir -> its model/ or adapter/
    if (path / "adapter_config.json").exists():
        if backend not in ("auto", "torch"):
            raise SlmError(
                f"{model} is a PEFT adapter: it runs on torch (or `slm merge` it, then any backend)"
            )
        return _open_adapter(path, device)
    if is_ort_dir(path):  # already converted (`slm quantize` / `slm export --format onnx`)
        if backend not in ("auto", "ort"):
            raise SlmError(f"{model} is an ONNX Runtime GenAI model: it runs on the ort backend only")
        made = read_manifest(path)
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
            note(f"{e}; running on torch instead (`--backend torch` skips the attempt)")
            return _open_torch(str(path), device, f"ONNX Runtime conversion failed: {e}")
    if backend == "ort":
        return _open_ort(path, precision, threads, why)
    if backend == "llama.cpp":
        return _open_llama_cpp(path, threads, why)
    return _open_torch(str(path) if path.exists() else model, device, why)


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a reply: generation_config's EOS ids, the tokenizer's EOS, ChatML's <|im_end|>."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    ids.append(tokenizer.eos_token_id)
    if "<|im_end|>" in getattr(tokenizer, "all_special_tokens", []):
        ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted({i for i in ids if i is not None})


def cache_arg(model) -> str:
    """The forward() keyword of a transformers model's KV cache: `cache` since transformers renamed it (the
    old `past_key_values` still works there but logs a deprecation warning per process), else the old name."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def cache_of(out):
    """The KV cache of a transformers model output, under either name (see cache_arg)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


class TorchStep:
    """The step function behind the decode loop: token ids in, next-token logits out, KV cache kept inside."""

    def __init__(self, model, prefix: torch.Tensor | None = None):
        self.model = model
        self.device = next(model.parameters()).device
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self.prefix = prefix  # [1, n, hidden] embeddings put before every prompt (prompt tuning)
        self.past = None
        self.cache_arg = cache_arg(model)

    def prefill(self, ids: list[int], max_new: int = 1) -> torch.Tensor:
        self.past = None
        if self.prefix is None:
            return self._forward(ids)
        with torch.inference_mode():
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            embeds = torch.cat([self.prefix, self.model.get_input_embeddings()(x)], dim=1)
            out = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        self.past = cache_of(out)
        return out.logits[0, -1].float()

    def next(self, token: int) -> torch.Tensor:
        return self._forward([token])

    @torch.inference_mode()
    def _forward(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=x, **{self.cache_arg: self.past}, use_cache=True, logits_to_keep=1)
        self.past = cache_of(out)
        return out.logits[0, -1].float()


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
    return cache_root() / "ort" / f"{fingerprint(source)}-{precision}.failed"


def _open_ort(path: Path, precision: str, threads: int, why: str) -> LM:
    ort_dir = ort_build.ort_model_dir(path, precision)
    try:
        return _load_ort(ort_dir, path, precision, threads, why)
    except SlmError:
        note(f"the cached conversion in {ort_dir} is unreadable; converting again")
        shutil.rmtree(ort_dir, ignore_errors=True)
        return _load_ort(ort_build.ort_model_dir(path, precision), path, precision, threads, why)


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
    require_package("onnxruntime_genai", "onnxruntime-genai", "the ort backend")
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
    model, tokenizer = load(ref, device)
    limit = getattr(model.config, "max_position_embeddings", None)
    eos = eos_token_ids(model, tokenizer)
    lm = LM("torch", "fp32", tokenizer, eos, limit, lambda: TorchStep(model), ref, {"why": why})
    lm.torch_model = model
    return lm


def _open_adapter(path: Path, device: str) -> LM:
    """A LoRA adapter (merged into its base for decoding) or a prompt-tuning adapter (its virtual tokens
    are prepended to every prompt's embeddings by the step), on torch."""
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
    require_package("llama_cpp", "llama-cpp-python", "the llama.cpp backend")
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
    dest = cache_root() / "gguf" / f"{fingerprint(path)}-q8_0"
    if not (dest / "model.gguf").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(path, dest, "q8_0", overwrite=True)
    return dest / "model.gguf"


def _eos_ids(path: Path | None, tokenizer) -> list[int]:
    """The ids that end a reply by the files: the tokenizer's EOS, generation_config.json's, ChatML's <|im_end|>."""
    ids = [tokenizer.eos_token_id]
    gen = path / "generation_config.json" if path is not None else None
    if gen is not None and gen.exists():
        configured = json.loads(gen.read_text()).get("eos_token_id")
        ids += configured if isinstance(configured, list) else [configured]
    if "<|im_end|>" in getattr(tokenizer, "all_special_tokens", []):
        ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted({i for i in ids if i is not None})
