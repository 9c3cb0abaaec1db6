"""Local sentence embeddings: any sentence-transformers model, run by ONNX Runtime (default) or torch.

Queries are latency-bound: torch MiniLM takes ~12 ms per sentence on one thread and suffers badly from
thread oversubscription, ONNX Runtime ~5 ms. So the whole sentence-transformers pipeline (transformer,
pooling, normalisation) is exported once to ONNX (`torch.onnx.export`, opset 17, TorchScript path) and
cached under `$SLMFORGE_HOME/cache/onnx/`; index and query then run the same graph. `onnx-int8` is that
graph with int8 per-channel weights (dynamic quantisation; ~2x the throughput, cosine ~0.99 to fp32):
an index records its runtime and queries default to it. `torch` runs SentenceTransformer directly (no
export; used by the fast tests, and a fallback).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from slmforge.core import hub, runtime, workspace
from slmforge.core.errors import SlmError

RUNTIMES = ("onnx", "onnx-int8", "torch")


class Embedder:
    """Text in, L2-normalised float32 vectors out (whatever the model's own pooling/normalisation says)."""

    def __init__(self, model: str = "minilm-l6", runtime_name: str = "onnx", threads: int | None = None):
        if runtime_name not in RUNTIMES:
            raise SlmError(f"embedding runtime must be one of {', '.join(RUNTIMES)} (got {runtime_name!r})")
        self.name = model
        self.path = _model_path(model)
        self.runtime = runtime_name
        self.threads = threads
        st = _sentence_transformer(self.path)
        self.tokenizer = st.tokenizer
        self.max_tokens = int(st.max_seq_length or self.tokenizer.model_max_length)
        self.dim = int(st.get_embedding_dimension())
        self._st = st
        onnx = runtime_name.startswith("onnx")
        self._session = _onnx_session(self.path, threads or 1, runtime_name == "onnx-int8") if onnx else None
        self._inputs = [i.name for i in self._session.get_inputs()] if self._session is not None else []

    # ------------------------------------------------------------ public

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of `texts` (rows in input order), batched shortest-first to waste little padding."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = self._encode_batch([texts[i] for i in idx])
        return out

    def encode_query(self, query: str) -> np.ndarray:
        """One query's vector; a query longer than the model reads is truncated, with a warning."""
        n = len(self.tokenizer(query, add_special_tokens=True, truncation=False)["input_ids"])
        if n > self.max_tokens:
            warnings.warn(
                f"the query is {n} tokens; {self.name} reads at most {self.max_tokens}: "
                "embedding its first part only",
                stacklevel=2,
            )
        return self._encode_batch([query])[0]

    # ------------------------------------------------------------ helpers

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        if self._session is None:
            import torch

            if self.threads:
                runtime.set_threads(self.threads)
            with torch.inference_mode():
                vecs = self._st.encode(texts, batch_size=len(texts), convert_to_numpy=True)
            return np.asarray(vecs, dtype=np.float32)
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="np"
        )
        feeds = {name: enc[name].astype(np.int64) for name in self._inputs}
        return self._session.run(None, feeds)[0].astype(np.float32, copy=False)


def _model_path(model: str) -> str:
    entry = hub.CATALOG.get(model)
    if entry is not None and entry.kind != "encoder":
        raise SlmError(f"{model} is a {entry.kind}, not a sentence embedding model")
    path = hub.resolve_model(model)
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        raise SlmError(f"{model} holds no model (no config.json)")
    return path


@functools.lru_cache(maxsize=4)
def _sentence_transformer(path: str):
    """One loaded model per process (tests and eval loops open many indexes with the same model)."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar for a model that loads in a second is noise
    try:
        return SentenceTransformer(str(path), device="cpu")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SlmError(f"could not load a sentence embedding model from {path}: {cause}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _fingerprint(path: str) -> str:
    """Identifies the model's weights: name, size and mtime of every file (no hashing of 90 MB)."""
    h = hashlib.sha256(str(Path(path).resolve()).encode())
    for f in sorted(Path(path).resolve().rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def onnx_path(path: str) -> Path:
    """Where the exported graph of the model at `path` is cached (exported on first use)."""
    root = workspace.home() / "cache" / "onnx" / f"{Path(path).name}-{_fingerprint(path)}"
    out = root / "model.onnx"
    if not out.exists():
        _export(path, out)
    return out


def onnx_int8_path(path: str) -> Path:
    """The int8 per-channel version of the exported graph (quantised once, beside it)."""
    src = onnx_path(path)
    out = src.with_name("model.int8.onnx")
    if not out.exists():
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = out.with_suffix(".onnx.tmp")
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" is advice for CNNs
        try:
            quantize_dynamic(str(src), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().setLevel(level)
        os.replace(tmp, out)
    return out


@functools.lru_cache(maxsize=8)
def _onnx_session(path: str, threads: int, int8: bool = False):
    import onnxruntime as ort

    model = onnx_int8_path(path) if int8 else onnx_path(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(threads, runtime.free_cores()))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # a cache file damaged by hand: say where it is
        raise SlmError(
            f"could not load the cached ONNX model {model} ({e}); delete it to re-export"
        ) from None


def _export(path: str, out: Path) -> None:
    """Export transformer + pooling + normalisation as one graph with dynamic batch and length."""
    import torch

    from slmforge.core.fsutil import atomic_file

    st = _sentence_transformer(path)
    names = [
        n for n in ("input_ids", "attention_mask", "token_type_ids") if n in st.tokenizer.model_input_names
    ]

    class Wrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return self.model(features)["sentence_embedding"]

    wrapper = Wrapper(st).eval()
    sample = st.tokenizer(["an example sentence", "another"], padding=True, return_tensors="pt")
    args = tuple(sample[n] for n in names)
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    axes["embedding"] = {0: "batch"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".onnx.tmp")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, args, str(tmp), input_names=names, output_names=["embedding"],
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip
    os.replace(tmp, out)
    with atomic_file(out.parent / "source.json") as f:
        json.dump({"model": str(path), "inputs": names}, f)
