"""A classifier directory on disk: build one from a base encoder, save it, measure it.

The saved directory is a transformers model (`AutoModelForSequenceClassification`) with the
mean-pooling architecture of `slmforge.clf.model` copied in as `modeling_slmforge.py`, its tokenizer
and `classifier.json` (labels, max length, OOS threshold; written by the trainers).
"""

from __future__ import annotations

from pathlib import Path

from slmforge.core.errors import SlmError

META = "classifier.json"


def encoder_config(base: str):
    """(local dir, transformers config) of the base encoder `base` (catalog name, directory or hub id);
    SlmError when it is a catalog model of another kind or does not load."""
    from transformers import AutoConfig

    from slmforge.core.hub import CATALOG, resolve_model

    if base in CATALOG and CATALOG[base].kind != "encoder":
        raise SlmError(f"--base {base} is a {CATALOG[base].kind}, not an encoder (try minilm-l6)")
    base_dir = resolve_model(base)
    try:
        return base_dir, AutoConfig.from_pretrained(base_dir)
    except Exception as e:
        raise SlmError(f"cannot load {base} as a transformers model: {first_line(e)}") from None


def build_classifier(base: str, label_names: list[str]):
    """The base encoder as a mean-pooling classifier with a fresh head, and its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from slmforge.clf.model import MeanPoolBertConfig, MeanPoolBertForSequenceClassification

    base_dir, config = encoder_config(base)
    if config.model_type not in ("bert", MeanPoolBertConfig.model_type):
        raise SlmError(
            f"--base {base} is a {config.model_type!r} model; this version fine-tunes BERT-family "
            "encoders (e.g. minilm-l6 or a directory from `slm classify train`)"
        )
    fields = config.to_dict()
    for k in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path",
              "id2label", "label2id", "num_labels"):  # fmt: skip
        fields.pop(k, None)
    new = MeanPoolBertConfig(
        **fields,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the new head and the unused pooler: expected
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = MeanPoolBertForSequenceClassification.from_pretrained(
            base_dir, config=new, ignore_mismatched_sizes=True
        )
    except Exception as e:
        raise SlmError(f"cannot load {base} as an encoder: {first_line(e)}") from None
    torch.nn.init.normal_(model.classifier.weight, std=0.02)
    torch.nn.init.zeros_(model.classifier.bias)
    return model, tokenizer, base_dir


def save_model(model, tokenizer, directory: Path) -> None:
    """The model, its tokenizer and the model's own code (`modeling_slmforge.py`, via `auto_map`)."""
    import shutil

    from transformers.utils import logging as hf_logging

    import slmforge.clf.model as ec

    hf_logging.disable_progress_bar()
    model.config.architectures = [type(model).__name__]
    model.config.auto_map = {
        "AutoConfig": "modeling_slmforge.MeanPoolBertConfig",
        "AutoModelForSequenceClassification": "modeling_slmforge.MeanPoolBertForSequenceClassification",
    }
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    shutil.copyfile(ec.__file__, directory / "modeling_slmforge.py")


def dir_size(path: Path) -> int:
    """Bytes of every file under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__
