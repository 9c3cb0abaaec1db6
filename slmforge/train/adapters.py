"""PEFT adapters and the base they were trained on: what an adapter records of its base, finding that base,
and loading the adapter onto it after a shape check, so a base of another architecture fails in one line.

`slm finetune --method lora|prompt-tuning` writes `base_model.json` (the base's name, path and shape,
`BASE_FILE`) beside the adapter; a foreign adapter records only PEFT's `base_model_name_or_path`.
"""

from __future__ import annotations

import json
from pathlib import Path

from slmforge.core.errors import SlmError
from slmforge.core.progress import quiet_hf
from slmforge.train.pretrained import load_base

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


def load_adapter(adapter: Path, base: str | None = None):
    """The fp32 base with the adapter applied (a PeftModel), after the shape check."""
    from peft import PeftModel

    base_path = locate_base(adapter, base)
    model = load_base(base_path, base or base_path)
    check_same_base(adapter, model.config, base or base_path)
    try:
        with quiet_hf():
            return PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:
        raise SlmError(
            f"{adapter} does not fit the base {base or base_path}: {str(e).strip().splitlines()[0]}"
        ) from None


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
    from slmforge.core.hub import resolve_model

    if base:
        return resolve_model(base)
    info = adapter_base(adapter)
    if info.get("path") and Path(info["path"]).exists():
        return info["path"]
    return resolve_model(info["name"])


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
    """The shape an adapter records of its base (`SHAPE_KEYS` of the base's config)."""
    return {k: getattr(config, k, None) for k in SHAPE_KEYS}
