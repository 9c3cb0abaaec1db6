"""What a model reference is, and how each kind loads.

A reference names a causal LM in one of these forms:
- a catalog name (`smollm2-135m-instruct`) or hub id: `hub.resolve_model` turns it into a local path;
- a finetune or distill run directory: `output_dir` turns it into its `model/` or `adapter/`;
- a PEFT adapter directory (`adapter_config.json`, plus `base_model.json`: its base's name, path and shape):
  `load_adapter` applies it to its base after checking the shapes agree;
- a GGUF file: transformers reads it (`load`), llama.cpp runs it (`slmforge.infer.engines`);
- an ONNX Runtime GenAI directory (`genai_config.json`), converted by `slm quantize` / `slm export`: `is_ort_dir`;
- a plain transformers directory (`config.json` and weights).

`load(model)` gives (model, tokenizer) of a plain directory or GGUF file; `load_finetuned(path)` of anything a
finetune run writes. Converted forms of a model (ONNX, GGUF) are cached under `cache_root()`, keyed by
`fingerprint(path)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from slmforge.core import hub, runtime, workspace
from slmforge.core.errors import SlmError
from slmforge.core.progress import quiet_hf


def resolve_causal_lm(model: str) -> Path:
    """The local path `model` names (a run dir resolved to its model/ or adapter/), or the hub id as a Path;
    SlmError for a catalog entry that is not a text-generation model."""
    check_generates(model)
    path = Path(hub.resolve_model(model))
    return output_dir(path) if path.is_dir() else path


def check_generates(model: str) -> None:
    """SlmError when `model` is a catalog entry of another kind (an encoder, a classifier)."""
    entry = hub.CATALOG.get(model)
    if entry is not None and entry.kind != "causal-lm":
        raise SlmError(f"{model} is an {entry.kind}, not a model that generates text")


def output_dir(path: str | Path) -> Path:
    """A run dir → its model/ or adapter/; anything else → itself."""
    p = Path(path)
    if (p / "adapter_config.json").exists():
        return p
    for sub, marker in (("model", "config.json"), ("adapter", "adapter_config.json")):
        if (p / sub / marker).exists():
            return p / sub
    return p


def is_ort_dir(path: Path) -> bool:
    """Whether `path` is a converted ONNX Runtime GenAI model directory."""
    return path.is_dir() and (path / "genai_config.json").exists()


def read_manifest(path: Path) -> dict:
    """The directory's slmforge.json, or {} when it is missing or unreadable."""
    f = path / workspace.MANIFEST
    try:
        return json.loads(f.read_text()) if f.exists() else {}
    except (OSError, ValueError):
        return {}


CARRIED_METRICS = ("rag_prompt_version",)
"""Manifest metrics about what a model was trained for (`slm rag tune`'s prompt fingerprint), which the models
made from it keep: `slm merge` of its adapter, `slm quantize` of the merged model."""


def carried_metrics(path: Path) -> dict:
    """The `CARRIED_METRICS` the directory's manifest records."""
    metrics = read_manifest(Path(path)).get("metrics", {})
    return {k: metrics[k] for k in CARRIED_METRICS if k in metrics}


def cache_root() -> Path:
    """Where converted runtime artifacts live: $SLMFORGE_CACHE, else $SLMFORGE_HOME/cache."""
    return Path(os.environ.get("SLMFORGE_CACHE") or workspace.home() / "cache")


def fingerprint(path: Path) -> str:
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


# ----------------------------------------------------------------------------- loading


def load(model: str, device: str = "auto"):
    """(model, tokenizer) for a catalog name, local directory or .gguf file, or hub id; in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_generates(model)
    ref = hub.resolve_model(model)
    path, kwargs = Path(ref), {}
    if path.is_file() and path.suffix == ".gguf":
        ref, kwargs = str(path.parent), {"gguf_file": path.name}
    elif path.is_file():
        raise SlmError(f"{model} is a file, not a model directory")
    elif path.is_dir() and not (path / "config.json").exists():
        raise SlmError(f"{model} holds no model (no config.json)")
    try:
        with quiet_hf():  # a "Loading weights" bar for a model that loads in a second is noise
            tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
            lm = AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SlmError(f"could not load a text-generation model from {model}: {cause}") from None
    return lm.to(runtime.pick_device(device)).eval(), tokenizer


def load_finetuned(path: str | Path, device: str = "auto"):
    """(model, tokenizer) in eval mode for a full model dir, a LoRA or prompt-tuning adapter dir, or a run dir.

    A LoRA adapter comes back merged into its base (a plain transformers model); a prompt-tuning adapter
    comes back as a PEFT model, whose `generate()` prepends the virtual tokens.
    """
    from transformers import AutoTokenizer

    from slmforge.train.adapters import load_adapter

    p = output_dir(path)
    if not (p / "adapter_config.json").exists():
        return load(str(p), device)
    model = load_adapter(p)
    if adapter_type(p) == "LORA":
        model = model.merge_and_unload()
    return model.to(runtime.pick_device(device)).eval(), AutoTokenizer.from_pretrained(p)


# ----------------------------------------------------------------------------- adapters


def adapter_type(adapter: Path) -> str:
    try:
        return json.loads((adapter / "adapter_config.json").read_text())["peft_type"]
    except (OSError, ValueError, KeyError) as e:
        raise SlmError(f"{adapter}/adapter_config.json is unreadable ({e})") from None
