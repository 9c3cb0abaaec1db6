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

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path

from slmforge.core import hub, runtime, workspace
from slmforge.core.errors import SlmError

BASE_FILE = "base_model.json"
SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)


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
        with no_progress_bars():  # a "Loading weights" bar for a model that loads in a second is noise
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

    p = output_dir(path)
    if not (p / "adapter_config.json").exists():
        return load(str(p), device)
    model = load_adapter(p)
    if adapter_type(p) == "LORA":
        model = model.merge_and_unload()
    return model.to(runtime.pick_device(device)).eval(), AutoTokenizer.from_pretrained(p)


def load_base(path: str, name: str):
    """The causal LM at `path` in fp32 (what fine-tuning trains and an adapter is applied to)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with quiet():
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise SlmError(f"cannot load {name} as a causal LM ({str(e).strip().splitlines()[0]})") from None


@contextlib.contextmanager
def quiet():
    """No transformers progress bars for second-long loads and saves, no PEFT/transformers deprecation noise."""
    with no_progress_bars(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@contextlib.contextmanager
def no_progress_bars():
    """transformers' progress bars off inside, back as they were after."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------- adapters


def adapter_type(adapter: Path) -> str:
    try:
        return json.loads((adapter / "adapter_config.json").read_text())["peft_type"]
    except (OSError, ValueError, KeyError) as e:
        raise SlmError(f"{adapter}/adapter_config.json is unreadable ({e})") from None


def adapter_base(adapter: Path) -> dict:
    """What the adapter records of its base: name, path and shape (shape may be absent for foreign adapters)."""
    if (adapter / BASE_FILE).exists():
        return json.loads((adapter / BASE_FILE).read_text())
    recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not recorded:
        raise SlmError(f"{adapter} does not record its base model; pass --base")
    return {"name": recorded, "path": recorded, "shape": None}


def locate_base(adapter: Path, base: str | None = None) -> str:
    """The base model path: `base` if given, else the recorded path, else the recorded catalog name."""
    if base:
        return hub.resolve_model(base)
    info = adapter_base(adapter)
    if info.get("path") and Path(info["path"]).exists():
        return info["path"]
    return hub.resolve_model(info["name"])


def load_adapter(adapter: Path, base: str | None = None):
    """The fp32 base with the adapter applied (a PeftModel), after the shape check."""
    from peft import PeftModel

    base_path = locate_base(adapter, base)
    model = load_base(base_path, base or base_path)
    check_same_base(adapter, model.config, base or base_path)
    try:
        with quiet():
            return PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:
        raise SlmError(
            f"{adapter} does not fit the base {base or base_path}: {str(e).strip().splitlines()[0]}"
        ) from None


def check_same_base(adapter: Path, config, base_name: str) -> None:
    shape = adapter_base(adapter).get("shape")
    if not shape:
        return
    mine = base_fingerprint(config)
    diff = [f"{k} {shape.get(k)} vs {mine.get(k)}" for k in SHAPE_KEYS if shape.get(k) != mine.get(k)]
    if diff:
        raise SlmError(
            f"{adapter} was trained on a different base than {base_name} ({'; '.join(diff)}); "
            f"use the base it was trained on ({adapter_base(adapter)['name']})"
        )


def base_fingerprint(config) -> dict:
    return {k: getattr(config, k, None) for k in SHAPE_KEYS}
