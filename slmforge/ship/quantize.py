"""Quantize models for cheaper inference, verified against the full-precision source: `slm quantize`.

One function per (scheme, format); `quantize(cfg)` picks it. Causal LMs: weight-only int8 or int4 as an ONNX
Runtime GenAI model (`quantize_causal`; int4 weights by GPTQ, `slmforge/infer/gptq.py`), with perplexity on held-out
text before and after. Encoders and classifiers: `int8` = ONNX Runtime dynamic int8 (weights int8, per output
channel by default; activations quantised on the fly). Only the encoder's MatMuls are quantised: the
classification head stays fp32, because its weights come from a logistic regression on standardised features
(scaled by 1/std per feature), so the per-tensor rounding of its input is amplified in the low-variance
features (a BANKING77 classifier with a quantised head agreed with fp32 on 73 % of test texts, without it on
99 %); the token embeddings stay fp32 too (a table lookup costs no compute, and quantising it cost another 0.4
points of agreement). The input is an ONNX directory from `slm export`, or a torch classifier / encoder, which
is exported first (into a temporary directory). The int8 model's outputs are compared with the fp32 ONNX
model's on the same texts (cosine, max |diff|, top-1 agreement for classifiers) and recorded in its manifest.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from slmforge.core.errors import SlmError
from slmforge.lm.perplexity import perplexity, read_texts
from slmforge.ship.export import VERIFY_TEXTS, ExportConfig, agreement, export, model_kind, onnx_outputs

SCHEMES = ("int8", "int4")
# Held-out perplexity over up to 64 windows of 256 tokens (16k tokens). With 16 windows (4k tokens) the int4
# rise of one SmolLM2-135M model read +7.5 % or +8.6 % depending on whether the windows were 255 or 256 long.
HELDOUT_WINDOWS = 64


@dataclass
class QuantizeConfig:
    model: str
    """A causal LM (catalog name or dir), an ONNX dir from `slm export`, or a classifier / encoder.

    A classifier or encoder dir is exported to ONNX first."""
    out: str
    """Directory to write."""
    scheme: str = "int8"
    """int8, or int4 (causal LMs: weight-only, ONNX Runtime GenAI MatMulNBits)."""
    per_channel: bool = True
    """Weight scales per channel.

    One scale per output channel: cosine 0.992 vs 0.964 per-tensor on MiniLM; slightly slower."""
    weight_type: str = "uint8"
    """uint8 (faithful on every x86) or int8 (needs AVX-512 VNNI).

    int8 weights run ORT's u8s8 kernels, which saturate on x86 CPUs without AVX-512 VNNI (measured on an AVX2
    EPYC: a MiniLM classifier's top-1 agreement with fp32 fell to 67 %); uint8 weights (u8u8 kernels) stay
    faithful on every CPU."""
    verify_texts: list[str] = field(default_factory=lambda: list(VERIFY_TEXTS))
    """Texts the int8 and the fp32 model are both run on to check they agree."""
    min_cosine: float = 0.95
    """Refuse (write nothing) when the mean cosine between int8 and fp32 outputs falls below this."""
    overwrite: bool = False
    """Replace --out if it exists."""
    calib: str | None = None
    """Causal LMs, int4: calibration text for GPTQ (txt/md/rst, or jsonl with 'text') [default: the Python
    docs' tutorial and HOWTOs].

    Ideally like the text the model will see."""
    heldout: str | None = None
    """Causal LMs: held-out text for the perplexity check [default: Python docs library pages].

    The same formats as --calib; perplexity is measured on it before and after. Keep it apart from --calib."""
    method: str = "gptq"
    """Causal LMs, int4: gptq (calibrated, error-compensating) or rtn.

    rtn: round to nearest, no data."""


def quantize(cfg: QuantizeConfig) -> dict:
    """Quantize `cfg.model` into `cfg.out`; return its manifest metrics (incl. verification vs fp32)."""
    if cfg.scheme not in SCHEMES:
        raise SlmError(f"unknown scheme {cfg.scheme!r}; this version quantizes: {', '.join(SCHEMES)}")
    if cfg.method not in ("gptq", "rtn"):
        raise SlmError(f"--method must be gptq or rtn, not {cfg.method!r}")
    if cfg.weight_type not in ("uint8", "int8"):
        raise SlmError(f"--weight-type must be uint8 or int8, not {cfg.weight_type!r}")
    from slmforge.core.hub import resolve_model

    source = Path(resolve_model(cfg.model))
    if (source / "model.onnx").exists():
        return quantize_onnx_int8(source, Path(cfg.out), cfg)
    if model_kind(source) == "causal-lm":
        return quantize_causal(source, Path(cfg.out), cfg)
    if cfg.scheme != "int8":
        raise SlmError(f"{cfg.scheme} is for causal LMs; encoders and classifiers quantize to int8")
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.fp32.", dir=out.parent) as tmp:
        fp32 = Path(tmp) / "onnx"
        export(ExportConfig(model=str(source), out=str(fp32), verify_texts=cfg.verify_texts))
        return quantize_onnx_int8(fp32, out, cfg, verify_vs=str(source))


def quantize_onnx_int8(source: Path, out: Path, cfg: QuantizeConfig, verify_vs: str | None = None) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoTokenizer

    from slmforge.clf.io import dir_size
    from slmforge.core import workspace
    from slmforge.core.fsutil import atomic_dir

    started = time.perf_counter()
    src_manifest = workspace.read_manifest(source)
    src_metrics = src_manifest.get("metrics", {})
    if src_metrics.get("precision", "fp32") != "fp32":
        raise SlmError(
            f"{source} is already quantized ({src_metrics['precision']}); quantize the fp32 export"
        )
    is_classifier = (source / "classifier.json").exists()
    kind = "classifier" if is_classifier else "encoder"
    output = "logits" if is_classifier else "embeddings"
    tokenizer = AutoTokenizer.from_pretrained(source)
    max_len = json.loads((source / "classifier.json").read_text())["max_len"] if is_classifier else 128
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # ORT's pre-process tip
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
        quantize_dynamic(
            str(source / "model.onnx"),
            str(tmp / "model.onnx"),
            per_channel=cfg.per_channel,
            weight_type=QuantType.QUInt8 if cfg.weight_type == "uint8" else QuantType.QInt8,
            nodes_to_quantize=encoder_matmuls(source / "model.onnx"),
        )
        for item in source.iterdir():
            if item.name not in ("model.onnx", workspace.MANIFEST) and item.is_file():
                shutil.copyfile(item, tmp / item.name)
        reference = onnx_outputs(source / "model.onnx", tokenizer, cfg.verify_texts, max_len, output)
        quantized = onnx_outputs(tmp / "model.onnx", tokenizer, cfg.verify_texts, max_len, output)
        check = agreement(reference, quantized, kind)
        if check["cosine_mean"] < cfg.min_cosine:
            raise SlmError(
                f"int8 outputs drift too far from fp32 (mean cosine {check['cosine_mean']:.4f} < "
                f"{cfg.min_cosine}); nothing was written"
            )
        size = dir_size(tmp)
    metrics = {
        "format": "onnx",
        "precision": "int8",
        "scheme": f"ort-dynamic-{cfg.weight_type}-"
        + ("per-channel" if cfg.per_channel else "per-tensor")
        + "-encoder-matmuls",
        "model_kind": kind,
        "params": src_metrics.get("params"),
        "verify_vs": verify_vs or str(source),
        "verify_texts": len(cfg.verify_texts),
        **{f"verify_{k}": v for k, v in check.items()},
        "disk_mb": round(size / 1e6, 1),
        "source_disk_mb": round(dir_size(source) / 1e6, 1),
        "quantize_seconds": round(time.perf_counter() - started, 1),
    }
    keep = {k: v for k, v in src_metrics.items() if k in ("val_accuracy", "val_macro_f1", "train_examples")}
    workspace.register(
        "model",
        out,
        source=f"quantize:{verify_vs or source}",
        data_hash=src_manifest.get("data_hash"),
        metrics={**keep, **metrics},
    )
    return {"out": str(out), **metrics}


def quantize_causal(source: Path, out: Path, cfg: QuantizeConfig) -> dict:
    """Weight-only int8 (symmetric, per block of 32 weights) or int4 (GPTQ, asymmetric blocks of 32, and of 16
    for the head's rows of the calibration text's most frequent tokens; the tied head in 4 bits too; see
    `ort_build.build_ort` and `slmforge.infer.gptq`) for a causal LM, as an ONNX Runtime GenAI model (`MatMulNBits`):
    the model `slm generate` and the server run by default.
    Verified against torch fp32 (logits cosine) and measured: perplexity on held-out text before and
    after, and the size on disk against the fp32 weights; all in the manifest."""
    from slmforge.core import workspace
    from slmforge.infer.model_dirs import carried_metrics
    from slmforge.infer.ort_build import OrtLogits, build_ort, ort_unsupported, verify_rows

    reason = ort_unsupported(source)
    if reason:
        raise SlmError(f"cannot quantize {source}: {reason}")
    texts = heldout_texts(cfg.heldout)
    calib = read_texts(cfg.calib) if cfg.calib and cfg.scheme == "int4" else None

    def measure(tmp: Path) -> dict:
        from slmforge.infer.model_dirs import load

        model, tokenizer = load(str(source), "cpu")
        window = min(256, getattr(model.config, "max_position_embeddings", 256) - 1)
        before = perplexity(model, tokenizer, texts, window, HELDOUT_WINDOWS * window, 4, "cpu")
        after = perplexity(OrtLogits(tmp), tokenizer, texts, window, HELDOUT_WINDOWS * window, 4, "cpu")
        weights = sum(f.stat().st_size for f in source.glob("*.safetensors"))
        onnx = sum(f.stat().st_size for f in tmp.glob("model.onnx*"))
        return {
            "perplexity_fp32": round(before["perplexity"], 4),
            "perplexity": round(after["perplexity"], 4),
            "perplexity_rise_pct": round(100 * (after["perplexity"] / before["perplexity"] - 1), 2),
            "perplexity_tokens": after["tokens"],
            "disk_mb": round(onnx / 1e6, 1),
            "source_disk_mb": round(weights / 1e6, 1),
            "size_ratio": round(onnx / weights, 4) if weights else None,
        }

    made = build_ort(
        source, out, cfg.scheme, measure=measure, overwrite=cfg.overwrite, calib=calib, int4_method=cfg.method
    )
    metrics = {"format": "onnxruntime-genai", "model_kind": "causal-lm", **verify_rows(made, source),
               **carried_metrics(source)}  # fmt: skip
    workspace.register("model", out, source=f"quantize:{source}", metrics=metrics)
    return {"out": str(out), **metrics}


def heldout_texts(heldout: str | None) -> list[str]:
    if heldout:
        return read_texts(heldout)
    docs = Path("/usr/share/doc/python3.11/html/_sources/library")
    files = sorted(docs.glob("*.rst.txt"))[::10][:40] if docs.is_dir() else []
    if not files:
        raise SlmError("no held-out text to measure perplexity on: pass --heldout FILE")
    return [f.read_text(encoding="utf-8", errors="replace")[:8000] for f in files]


def encoder_matmuls(path: Path) -> list[str]:
    """Names of the graph's MatMul nodes outside the classification head (the ones worth quantising)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type == "MatMul" and "classifier" not in n.name]
    if not names:
        raise SlmError(f"{path} has no MatMul to quantise (is it an encoder exported by `slm export`?)")
    return names
