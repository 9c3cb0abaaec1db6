"""Tokenised data packed into memory-mapped shards, and a deterministic, resumable batch order.

`prepare_tokens` streams a dataset's `train.jsonl`/`val.jsonl` through a tokenizer once and writes flat
uint16/uint32 shards (documents joined by EOS) into a cache keyed by data and tokenizer. `TokenWindows`
views the shards as fixed-length windows; `batch_windows` says which windows form each step's global
batch, from the seed and the step alone, so a resumed or multi-process run sees the same data order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir

SHARD_TOKENS = 1 << 25  # 32M tokens per shard file


def dataset_files(data: str | Path) -> dict[str, Path]:
    data = Path(data)
    if not data.is_dir():
        raise SlmError(f"dataset {data} is not a directory (make one with `slm data ingest`)")
    files = {split: data / f"{split}.jsonl" for split in ("train", "val")}
    if not files["train"].exists():
        raise SlmError(f"{data} has no train.jsonl (make one with `slm data ingest`)")
    return files


def prepare_tokens(data: str | Path, tokenizer, progress: bool = True) -> Path:
    """Tokenise the dataset once per (data, tokenizer); return the cache dir holding the shards."""
    files = dataset_files(data)
    key = hashlib.sha256()
    for f in files.values():
        if f.exists():
            st = f.stat()
            key.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    key.update(
        tokenizer.backend_tokenizer.to_str().encode() if hasattr(tokenizer, "backend_tokenizer") else b""
    )
    cache = workspace.home() / "cache" / "tokens" / key.hexdigest()[:16]
    if (cache / "meta.json").exists():
        return cache
    eos = tokenizer.eos_token_id
    if eos is None:
        raise SlmError("the tokenizer has no EOS token; documents cannot be separated")
    dtype = np.uint16 if len(tokenizer) <= 65536 else np.uint32
    with atomic_dir(cache, overwrite=True) as tmp:
        meta = {"dtype": np.dtype(dtype).name, "eos": eos, "splits": {}}
        for split, path in files.items():
            if path.exists():
                meta["splits"][split] = _tokenize_split(path, tokenizer, tmp, split, dtype, eos, progress)
        if meta["splits"]["train"]["tokens"] == 0:
            raise SlmError(f"{files['train']} holds no text to train on")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return cache


def _tokenize_split(path: Path, tokenizer, out: Path, split: str, dtype, eos: int, progress: bool) -> dict:
    from slmforge.core.progress import bar

    shards, buf, n_buf, total_tokens, total_bytes, docs = [], [], 0, 0, 0, 0

    def flush():
        nonlocal buf, n_buf
        if n_buf:
            name = f"{split}_{len(shards):03d}.bin"
            np.concatenate(buf).astype(dtype).tofile(out / name)
            shards.append({"file": name, "tokens": n_buf})
            buf, n_buf = [], 0

    size = path.stat().st_size
    with (
        open(path, encoding="utf-8") as f,
        bar(f"tokenize {split}", total=size, unit="B", enabled=progress) as b,
    ):
        batch: list[str] = []

        def encode_batch():
            nonlocal n_buf, total_tokens, total_bytes, docs, batch
            n, nb = _encode(batch, tokenizer, eos, buf)
            n_buf, total_tokens, total_bytes, docs = (
                n_buf + n,
                total_tokens + n,
                total_bytes + nb,
                docs + len(batch),
            )
            batch = []

        for line in f:
            b.advance(len(line.encode("utf-8")))
            batch.append(json.loads(line)["text"])
            if len(batch) == 256:
                encode_batch()
                if n_buf >= SHARD_TOKENS:
                    flush()
        if batch:
            encode_batch()
        flush()
    return {"shards": shards, "tokens": total_tokens, "bytes": total_bytes, "documents": docs}


def _encode(texts: list[str], tokenizer, eos: int, buf: list) -> tuple[int, int]:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n = 0
    for seq in ids:
        arr = np.asarray(seq + [eos], dtype=np.int64)
        buf.append(arr)
        n += len(arr)
    return n, sum(len(t.encode("utf-8")) for t in texts)


@dataclass
class TokenWindows:
    """A split's shards as windows of `seq_len + 1` tokens (inputs and shifted targets), stride `seq_len`."""

    shards: list[np.memmap]
    seq_len: int
    bytes_per_token: float

    def __post_init__(self):
        counts = [max(0, (len(s) - 1) // self.seq_len) for s in self.shards]
        self.starts = np.cumsum([0] + counts)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        off = (i - int(self.starts[shard])) * self.seq_len
        return np.asarray(self.shards[shard][off : off + self.seq_len + 1], dtype=np.int64)

    def batch(self, indices) -> np.ndarray:
        return np.stack([self.window(int(i)) for i in indices])


def open_windows(cache: Path, split: str, seq_len: int) -> TokenWindows | None:
    meta = json.loads((cache / "meta.json").read_text())
    info = meta["splits"].get(split)
    if not info or info["tokens"] == 0:
        return None
    shards = [np.memmap(cache / s["file"], dtype=meta["dtype"], mode="r") for s in info["shards"]]
    return TokenWindows(shards, seq_len, info["bytes"] / info["tokens"])


def batch_windows(step: int, global_batch: int, n_windows: int, seed: int) -> np.ndarray:
    """Window indices of the global batch at `step`: a fresh seeded permutation each epoch, no repeats within one."""
    first = step * global_batch
    out = np.empty(global_batch, dtype=np.int64)
    for k in range(global_batch):
        epoch, pos = divmod(first + k, n_windows)
        out[k] = _permutation(n_windows, seed, epoch)[pos]
    return out


_PERM_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    key = (n, seed, epoch)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 4:
            _PERM_CACHE.clear()
        _PERM_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _PERM_CACHE[key]
