"""Byte-level BPE tokenizers trained on your own data, saved so `AutoTokenizer.from_pretrained` loads them.

Like GPT-2 and SmolLM2: text is split into UTF-8 bytes (so no input is ever out of vocabulary) and the
most frequent byte pairs are merged until the vocabulary is full. Three special tokens: `<|endoftext|>`
(ends every document; also the BOS/PAD/UNK token) and `<|im_start|>` / `<|im_end|>` for ChatML turns,
with a ChatML chat template, so the same tokenizer serves pretraining and chat fine-tuning.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # every byte, the special tokens and at least one merge
MAX_VOCAB = 262144
LEARNED_FRACTION = 0.9  # below this share of the asked vocabulary, the corpus is too small for it
VAL_BYTES = 8 << 20  # bytes/token is measured on at most this much validation text

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class TokenizerConfig:
    """What `slm tokenizer train` needs."""

    data: str
    """Dataset dir from `slm data ingest`, or one .txt/.jsonl file."""
    out: str
    """Where to write it [default: $SLMFORGE_HOME/tokenizers/<data>-<vocab-size>].

    The default is the CLI's; from Python it is required."""
    vocab_size: int = 8192
    """Tokens in the vocabulary (260 … 262144).

    Special tokens included."""
    min_frequency: int = 2
    """Merge only pairs seen this often."""
    overwrite: bool = False
    """Replace --out if it exists."""


def train_tokenizer(cfg: TokenizerConfig, progress: bool = True) -> dict:
    """Train byte-level BPE on `cfg.data` and save it to `cfg.out`; return path, vocab size, bytes/token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    _check_config(cfg)
    train_files, val_files = _data_files(cfg.data)
    if _first_text(train_files) is None:
        raise SlmError(f"{cfg.data} holds no text to train a tokenizer on")

    started = time.perf_counter()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress and sys.stderr.isatty(),  # off a terminal it prints only blank lines
    )
    with atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        tokenizer.train_from_iterator(_texts(train_files), trainer=trainer)
        learned = tokenizer.get_vocab_size()
        if learned < LEARNED_FRACTION * cfg.vocab_size:
            suggestion = max(MIN_VOCAB, learned // 64 * 64)
            raise SlmError(
                f"the corpus is too small for a {cfg.vocab_size}-token vocabulary: only {learned} tokens "
                f"were learned (min frequency {cfg.min_frequency}); pass --vocab-size {suggestion} or less, "
                "or add data"
            )
        hf_tokenizer = _wrap(tokenizer)
        hf_tokenizer.save_pretrained(tmp)
        eval_split = "val" if val_files and _first_text(val_files) is not None else "train"
        bytes_per_token = _bytes_per_token(tokenizer, val_files if eval_split == "val" else train_files)

    result = {
        "path": str(Path(cfg.out).resolve()),
        "vocab_size": learned,
        "bytes_per_token": round(bytes_per_token, 4),
        "bytes_per_token_split": eval_split,
        "min_frequency": cfg.min_frequency,
        "seconds": round(time.perf_counter() - started, 2),
    }
    workspace.register(
        "tokenizer",
        cfg.out,
        source=str(Path(cfg.data).resolve()),
        metrics={k: result[k] for k in ("vocab_size", "bytes_per_token", "bytes_per_token_split")},
    )
    return result


def token_byte_lengths(tokenizer, size: int | None = None) -> np.ndarray:
    """Each token id's length in UTF-8 bytes (0 for special tokens), for bits-per-byte.

    Byte-level BPE stores each byte as one printable character (GPT-2's bytes_to_unicode map), so a
    token's byte length is its character count; other tokenizers fall back to decoding each token.
    `size` pads the array with zeros up to the model's (possibly larger) embedding count.
    """
    n = len(tokenizer)
    lengths = np.zeros(max(n, size or 0), dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    byte_chars = _byte_decoder()
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    byte_level = _is_byte_level(tokenizer)
    for i, token in enumerate(tokens):
        if i in special or token is None:
            continue
        if byte_level and all(c in byte_chars for c in token):
            lengths[i] = len(token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):  # SentencePiece byte
            lengths[i] = 1
        elif "\u2581" in token:  # SentencePiece: ▁ stands for a space
            lengths[i] = len(token.replace("\u2581", " ").encode("utf-8"))
        else:
            lengths[i] = len(tokenizer.decode([i], clean_up_tokenization_spaces=False).encode("utf-8"))
    return lengths


# ---------------------------------------------------------------- helpers


def _check_config(cfg: TokenizerConfig) -> None:
    if not MIN_VOCAB <= cfg.vocab_size <= MAX_VOCAB:
        raise SlmError(f"--vocab-size {cfg.vocab_size} is out of range ({MIN_VOCAB} … {MAX_VOCAB})")
    if cfg.min_frequency < 1:
        raise SlmError(f"--min-frequency must be at least 1 (got {cfg.min_frequency})")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise SlmError(f"--out {cfg.out} is a file, not a directory")


def _data_files(data: str) -> tuple[list[Path], list[Path]]:
    """(train files, val files) for a dataset dir or a single .txt/.jsonl file."""
    path = Path(data).expanduser()
    if not path.exists():
        raise SlmError(
            f"{data} does not exist (give a dataset dir from `slm data ingest` or a .txt/.jsonl file)"
        )
    if path.is_dir():
        train, val = path / "train.jsonl", path / "val.jsonl"
        if not train.exists():
            raise SlmError(f"{data} has no train.jsonl (make a dataset with `slm data ingest`)")
        return [train], [val] if val.exists() else []
    if path.suffix not in (".txt", ".jsonl", ".md", ".rst"):
        raise SlmError(f"{data} is not a .txt or .jsonl file or a dataset directory")
    return [path], []


def _texts(files: list[Path]) -> Iterator[str]:
    """Stream texts: one per JSONL record (its "text" field), or one per line of a text file."""
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            if path.suffix == ".jsonl":
                for line_number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line).get("text", "")
                    except (json.JSONDecodeError, AttributeError):
                        raise SlmError(
                            f"{path}:{line_number} is not a JSON object with a text field"
                        ) from None
                    if text:
                        yield text
            else:
                for line in f:
                    if line.strip():
                        yield line


def _first_text(files: list[Path]) -> str | None:
    return next(_texts(files), None)


def _bytes_per_token(tokenizer, files: list[Path], batch: int = 256) -> float:
    """Mean UTF-8 bytes per token over (at most VAL_BYTES of) the texts in `files`."""
    n_bytes = n_tokens = 0
    texts: list[str] = []
    for text in _texts(files):
        texts.append(text)
        n_bytes += len(text.encode("utf-8"))
        if len(texts) == batch:
            n_tokens += sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
            texts = []
        if n_bytes >= VAL_BYTES:
            break
    if texts:
        n_tokens += sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    return n_bytes / max(n_tokens, 1)


def _wrap(tokenizer):
    """The transformers tokenizer that `save_pretrained` writes and `AutoTokenizer` reads back."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    parts = [backend.pre_tokenizer, backend.decoder]
    return any("ByteLevel" in (repr(p) if p is not None else "") for p in parts)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode map, inverted: printable character -> the byte it stands for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}
