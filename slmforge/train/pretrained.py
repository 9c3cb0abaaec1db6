"""The pretrained causal LM a trainer starts from: loading it (fp32) and its tokenizer, the check that its weights
are full precision, and the model behind a PEFT wrapper with its generation config.

Fine-tuning, distillation and merging all start from full-precision transformers weights: a quantised,
GGUF or ONNX model is refused with one line that says what it is (`check_full_precision`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slmforge.core.errors import SlmError
from slmforge.core.progress import quiet_hf


def load_base(path: str, name: str):
    """The causal LM at `path` in fp32; SlmError naming `name` if it is not one."""
    from transformers import AutoModelForCausalLM

    try:
        with quiet_hf():
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise SlmError(f"cannot load {name} as a causal LM ({str(e).strip().splitlines()[0]})") from None


def load_tokenizer(base: str, template_file: str | None = None):
    """The tokenizer of `base`, with the Jinja chat template of `template_file` if given."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as e:
        raise SlmError(f"cannot load the tokenizer of {base} ({str(e).splitlines()[0]})") from None
    if template_file:
        tokenizer.chat_template = Path(template_file).read_text(encoding="utf-8")
    return tokenizer


def check_full_precision(path: str, name: str, advice: str) -> None:
    """SlmError unless `path` holds full-precision transformers weights (not GGUF, ONNX or a quantised config)."""
    p = Path(path)
    if not p.exists():
        return  # a hub id: transformers checks it when loading
    what = quantised(p)
    if what:
        raise SlmError(f"{name} is {what}; {advice}")


def quantised(p: Path) -> str | None:
    """What makes the local model `p` other than full-precision transformers weights, in a few words; or None."""
    if p.is_file():
        return "a GGUF file (quantised)" if p.suffix == ".gguf" else "a file, not a model directory"
    config = p / "config.json"
    if config.exists():
        try:
            qc = json.loads(config.read_text()).get("quantization_config")
        except ValueError:
            qc = None
        if qc:
            return (
                f"quantised ({qc.get('quant_method', 'quantization_config') if isinstance(qc, dict) else qc})"
            )
    weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
    if not weights and any(p.glob("*.onnx")):
        return "an ONNX export (possibly quantised), not trainable transformers weights"
    if not weights and any(p.glob("*.gguf")):
        return "a GGUF model (quantised)"
    return None


def base_model(model):
    """The transformers model inside a PEFT wrapper (the model itself when unwrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def base_config(model):
    return base_model(model).config


def generation_config(model, eos_ids: list[int], pad_id: int):
    """A copy of the model's generation config that stops at every id of `eos_ids` and pads with `pad_id`."""
    import copy

    from transformers import GenerationConfig

    gen = copy.deepcopy(getattr(model, "generation_config", None)) or GenerationConfig()
    gen.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    gen.pad_token_id = pad_id
    if gen.bos_token_id is None:
        gen.bos_token_id = base_config(model).bos_token_id
    return gen


def local_path(path: str) -> str:
    """An existing local path made absolute; anything else (a hub id) as given."""
    p = Path(path)
    return str(p.resolve()) if p.exists() else path
