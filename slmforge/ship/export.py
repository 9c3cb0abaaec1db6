"""Export models to other runtimes, verified against the source: `slm export MODEL --format onnx|gguf`.

One function per (format, model kind); `export(cfg)` picks it. Today: ONNX for encoders, both
classifiers from `slm classify train` (output `logits`) and plain sentence encoders such as
`minilm-l6` (output `embeddings`, mean-pooled); GGUF (llama.cpp) for Llama-family causal LMs, in
`slmforge.infer.gguf` (`out/model.gguf`, quant f32/f16/q8_0/q4_0). Every export runs the source and
the exported model on the same texts and records their agreement (max |diff|, cosine, top-1
agreement) in the manifest; an export that disagrees is not written.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError

FORMATS = ("onnx", "gguf")

# Short, varied queries for verification when no data file is given.
VERIFY_TEXTS = [
    "I am still waiting on my card?",
    "What is the exchange rate for euros today?",
    "my top up did not work",
    "How do I reset my PIN?",
    "Someone stole my wallet and my card was in it, please help",
    "Why was I charged a fee for a transfer to a friend?",
    "Can I get a virtual card for online shopping",
    "The app keeps crashing when I try to log in.",
    "what currencies do you support",
    "I want to close my account",
    "Is there a limit on how much I can withdraw from an ATM in a single day when travelling abroad?",
    "hi",
]


@dataclass
class ExportConfig:
    model: str
    """A classifier dir, an encoder, or a causal LM (catalog name or dir).

    A classifier dir from `slm classify train`; an encoder such as minilm-l6."""
    out: str
    """Directory to write (model.onnx or model.gguf, …)."""
    format: str = "onnx"
    """onnx (encoders, classifiers; causal LMs with KV cache) or gguf (Llama LMs)."""
    opset: int = 17
    """ONNX opset (encoders)."""
    verify_texts: list[str] = field(default_factory=lambda: list(VERIFY_TEXTS))
    """Texts the source and the export are both run on to check they agree."""
    tolerance: float = 1e-3
    """Largest |difference| between the source's and the export's outputs that passes verification."""
    overwrite: bool = False
    """Replace --out if it exists."""
    quant: str = "q8_0"
    """GGUF weights: f32, f16, q8_0 or q4_0."""


def export(cfg: ExportConfig) -> dict:
    """Export `cfg.model` to `cfg.format` in `cfg.out`; return the manifest metrics (incl. verification)."""
    if cfg.format not in FORMATS:
        raise SlmError(f"unknown format {cfg.format!r}; this version exports: {', '.join(FORMATS)}")
    from slmforge.core.hub import resolve_model

    source = Path(resolve_model(cfg.model))
    if cfg.format == "gguf":
        from slmforge.infer.gguf import export_gguf

        return export_gguf(source, Path(cfg.out), cfg.quant, overwrite=cfg.overwrite)
    kind = model_kind(source)
    if kind == "causal-lm":  # fp32 decoder with KV cache, for ONNX Runtime (GenAI)
        from slmforge.core import workspace
        from slmforge.infer.ort_build import build_ort, ort_unsupported, verify_rows

        reason = ort_unsupported(source)
        if reason:
            raise SlmError(f"cannot export {cfg.model} to ONNX: {reason}")
        made = build_ort(source, Path(cfg.out), "fp32", overwrite=cfg.overwrite)
        metrics = {"format": "onnxruntime-genai", "model_kind": kind, **verify_rows(made, source)}
        workspace.register("model", Path(cfg.out), source=f"export:{source}", metrics=metrics)
        return {"out": cfg.out, **metrics}
    return export_encoder_onnx(source, Path(cfg.out), kind, cfg)


def model_kind(path: Path) -> str:
    """`classifier` (from slm classify train), `encoder` (a BERT-family model) or `causal-lm`."""
    if (path / "classifier.json").exists():
        meta = json.loads((path / "classifier.json").read_text())
        if meta.get("task") == "tokens":
            raise SlmError(
                f"{path} is a token classifier: ONNX export and int8 are for text classifiers and encoders "
                "in this version (a tagger has logits per token); run it with torch"
            )
        if meta.get("arch") == "tfidf":
            from slmforge.clf.tfidf import ONNX_REFUSAL

            raise SlmError(f"{path}: {ONNX_REFUSAL}")
        if meta.get("arch") == "static":
            from slmforge.clf.static import ONNX_REFUSAL as STATIC_REFUSAL

            raise SlmError(f"{path}: {STATIC_REFUSAL}")
        return "classifier"
    config = path / "config.json"
    if not config.exists():
        raise SlmError(f"{path} has no config.json: not a transformers model directory")
    c = json.loads(config.read_text())
    if c.get("model_type") in ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "electra"):
        return "encoder"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in c.get("architectures") or []):
        return "causal-lm"
    raise SlmError(f"{path}: cannot tell what kind of model this is (model_type {c.get('model_type')!r})")


def export_encoder_onnx(source: Path, out: Path, kind: str, cfg: ExportConfig) -> dict:
    import torch
    from transformers import AutoTokenizer

    import slmforge.clf.model  # noqa: F401  (registers the model type: no remote-code prompt)
    from slmforge.core import workspace
    from slmforge.core.fsutil import atomic_dir

    started = time.perf_counter()
    model = load_torch(source, kind)
    tokenizer = AutoTokenizer.from_pretrained(source)
    max_len = _max_len(source)
    wrapper = onnx_wrapper(model, kind)
    output = "logits" if kind == "classifier" else "embeddings"
    example = tokenizer(["a short example", "and a somewhat longer second example"], padding=True,
                        return_tensors="pt")  # fmt: skip
    args = (example["input_ids"], example["attention_mask"], torch.zeros_like(example["input_ids"]))
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches; verified below
            torch.onnx.export(
                wrapper,
                args,
                str(tmp / "model.onnx"),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=[output],
                dynamic_axes={
                    n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask", "token_type_ids")
                }
                | {output: {0: "batch"}},  # fmt: skip
                opset_version=cfg.opset,
                dynamo=False,
            )
        tokenizer.save_pretrained(tmp)
        if kind == "classifier":
            shutil.copyfile(source / "classifier.json", tmp / "classifier.json")
        # a padded batch and one unpadded text: both shapes the runtime will see
        reference = torch_outputs(wrapper, tokenizer, cfg.verify_texts, max_len)
        exported = onnx_outputs(tmp / "model.onnx", tokenizer, cfg.verify_texts, max_len, output)
        single = cfg.verify_texts[:1]
        reference = np.concatenate([reference, torch_outputs(wrapper, tokenizer, single, max_len)])
        exported = np.concatenate(
            [exported, onnx_outputs(tmp / "model.onnx", tokenizer, single, max_len, output)]
        )
        check = agreement(reference, exported, kind)
        if check["max_abs_diff"] > cfg.tolerance:
            raise SlmError(
                f"the ONNX export disagrees with {source}: max |diff| {check['max_abs_diff']:.2e} > "
                f"{cfg.tolerance:g}; nothing was written"
            )
    metrics = {
        "format": "onnx",
        "precision": "fp32",
        "model_kind": kind,
        "opset": cfg.opset,
        "params": sum(p.numel() for p in model.parameters()),
        "verify_vs": str(source),
        "verify_texts": len(cfg.verify_texts),
        **{f"verify_{k}": v for k, v in check.items()},
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    src_manifest = workspace.read_manifest(source)
    workspace.register(
        "model",
        out,
        source=f"export:{source}",
        data_hash=src_manifest.get("data_hash"),
        metrics={**_carry(src_manifest), **metrics},
    )
    return {"out": str(out), **metrics}


def onnx_wrapper(model, kind: str):
    """The model behind explicit (input_ids, attention_mask, token_type_ids) inputs: exporting BertModel
    directly trips on `use_cache`, and the dynamo exporter needs onnxscript. Encoders are mean-pooled."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            kw = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            if kind == "classifier":
                return self.model(**kw).logits
            hidden = self.model(**kw).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    return Wrapper().eval()


def load_torch(path: Path, kind: str):
    """The source model in eager attention (what exports cleanly), in eval mode."""
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if kind == "classifier":
        return AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
    return AutoModel.from_pretrained(path, attn_implementation="eager").eval()


def torch_outputs(module, tokenizer, texts: list[str], max_len: int) -> np.ndarray:
    import torch

    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        out = module(enc["input_ids"], enc["attention_mask"], torch.zeros_like(enc["input_ids"]))
    return out.float().numpy()


def onnx_outputs(onnx_path: Path, tokenizer, texts: list[str], max_len: int, output: str) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="np")
    feed = {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
        "token_type_ids": np.zeros_like(enc["input_ids"], dtype=np.int64),
    }
    return session.run([output], feed)[0]


def agreement(reference: np.ndarray, other: np.ndarray, kind: str) -> dict:
    """Max |diff|, mean and min cosine per row, and (classifiers) the share of equal top-1 labels."""
    a, b = reference.astype(np.float64), other.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    result = {
        "max_abs_diff": float(np.abs(a - b).max()),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
    }
    if kind == "classifier":
        result["top1_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
    return result


def _max_len(path: Path) -> int:
    meta = path / "classifier.json"
    return json.loads(meta.read_text())["max_len"] if meta.exists() else 128


def _carry(manifest: dict) -> dict:
    """Training facts worth keeping on a derived model (accuracy is re-measured by `slm eval`)."""
    m = manifest.get("metrics", {})
    return {k: m[k] for k in ("val_accuracy", "val_macro_f1", "train_examples") if k in m}
