"""`slm merge`: fold a LoRA adapter into its full-precision base and save a plain transformers directory.

Order matters: merging LoRA deltas into quantised weights rounds them away, so a quantised base is
refused (merge into the full-precision base, then quantise the merged model). A prompt-tuning adapter
has no weights to fold in and is refused too. An adapter is checked against the base's shape before
loading (adapters record it in `base_model.json`), so a base of another architecture fails in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir
from slmforge.core.progress import quiet_hf
from slmforge.infer.model_dirs import adapter_type, carried_metrics, output_dir
from slmforge.lm.configs import MergeConfig
from slmforge.train.adapters import adapter_base, load_adapter, locate_base
from slmforge.train.pretrained import check_full_precision, generation_config, local_path


@dataclass
class MergeResult:
    out: str
    base: str
    params: int


def merge(cfg: MergeConfig) -> MergeResult:
    from transformers import AutoTokenizer

    adapter = _check_adapter(cfg.adapter)
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise SlmError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
    base_path = locate_base(adapter, cfg.base)
    check_full_precision(
        base_path,
        cfg.base or base_path,
        "merging LoRA into quantised weights loses its deltas: merge into the full-precision base first, "
        "then quantise the merged model",
    )
    model = load_adapter(adapter, cfg.base).merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    gen = _adapter_generation_config(adapter, model)
    with atomic_dir(out, overwrite=cfg.overwrite) as tmp, quiet_hf():
        model.generation_config = gen
        model.save_pretrained(tmp, safe_serialization=True)
        gen.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    workspace.register(
        "model",
        out,
        source=str(adapter),
        metrics={
            "merged_from": str(adapter),
            "base": adapter_base(adapter)["name"],
            "params": params,
            **carried_metrics(adapter),
        },
    )
    return MergeResult(str(out), local_path(base_path), params)


def _check_adapter(path: str) -> Path:
    adapter = output_dir(path)
    if not adapter.is_dir():
        raise SlmError(f"adapter {path} does not exist")
    if not (adapter / "adapter_config.json").exists():
        raise SlmError(
            f"{path} is not a PEFT adapter (no adapter_config.json); give the dir `slm finetune` wrote"
        )
    kind = adapter_type(adapter)
    if kind in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
        raise SlmError(
            f"{path} is a {kind.lower().replace('_', '-')} adapter: its virtual tokens are inputs, not weights, "
            "so there is nothing to merge; load it with its base instead (slmforge.infer.model_dirs.load_finetuned)"
        )
    if kind != "LORA":
        raise SlmError(f"{path} is a {kind} adapter; only LoRA adapters can be merged")
    return adapter


def _adapter_generation_config(adapter: Path, model):
    """The adapter's saved generation config (EOS ids incl. end-of-turn), else the base's."""
    from transformers import GenerationConfig

    if (adapter / "generation_config.json").exists():
        return GenerationConfig.from_pretrained(adapter)
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    return generation_config(model, [e for e in eos if e is not None], model.config.pad_token_id)
