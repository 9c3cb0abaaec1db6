"""Held-out loss, perplexity and bits per byte of causal LMs on text: `slm eval --task perplexity`.

Data is a dataset dir from `slm data ingest` (its val split), a .jsonl file (the `text` field) or a .txt
file. The documents are joined by EOS and scored in non-overlapping windows of `seq_len` tokens, up to
`max_tokens` per data source (the same text for every model). Bits per byte uses the UTF-8 bytes behind
the scored tokens, so models with different tokenizers compare fairly. `slm quantize` measures its
perplexity rise with the same `perplexity`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError


def evaluate_perplexity(cfg, progress: bool = True) -> list[dict]:
    """`slm eval --task perplexity`: one row per (model, data source).

    `cfg` is a `slmforge.ship.evaluate.EvalConfig`. Each model is loaded once and scores every data source;
    the first model is the baseline that the others' `perplexity_change` is measured against.
    """
    from slmforge.core.runtime import pick_device, set_threads

    set_threads(cfg.threads)
    device = pick_device(cfg.device)
    texts = {d: read_texts(d) for d in cfg.data}
    rows = []
    for name in cfg.models:
        model, tokenizer = _load(name, device)
        for data, docs in texts.items():
            t0 = time.perf_counter()
            m = perplexity(
                model, tokenizer, docs, cfg.seq_len, cfg.max_tokens, cfg.batch_size, device, progress
            )
            rows.append({"model": name, "data": data, **m, "seconds": time.perf_counter() - t0})
        del model
    for row in rows:
        base = next(r for r in rows if r["data"] == row["data"])
        row["perplexity_change"] = row["perplexity"] / base["perplexity"] - 1
    return rows


def perplexity(
    model,
    tokenizer,
    docs: list[str],
    seq_len: int,
    max_tokens: int,
    batch_size: int,
    device,
    progress: bool = False,
) -> dict:
    """Loss over non-overlapping windows of the documents joined by EOS; bits per byte from the scored tokens."""
    import torch
    import torch.nn.functional as F

    from slmforge.core.progress import bar
    from slmforge.data.tokenizer import token_byte_lengths

    ids = token_stream(tokenizer, docs, max_tokens + 1)
    n_windows = (len(ids) - 1) // seq_len
    if n_windows == 0:
        raise SlmError(f"the data holds fewer than {seq_len + 1} tokens; lower --seq-len")
    byte_len = token_byte_lengths(tokenizer, size=max(len(tokenizer), int(ids.max()) + 1))
    nats, tokens, nbytes = 0.0, 0, 0
    model.eval()
    with torch.no_grad(), bar("perplexity", total=n_windows, enabled=progress) as b:
        for start in range(0, n_windows, batch_size):
            rows = [
                ids[i * seq_len : i * seq_len + seq_len + 1]
                for i in range(start, min(n_windows, start + batch_size))
            ]
            batch = torch.from_numpy(np.stack(rows)).to(device)
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            targets = batch[:, 1:]
            nats += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
            tokens += targets.numel()
            nbytes += int(byte_len[targets.cpu().numpy()].sum())
            b.advance(len(rows))
    loss = nats / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bpb": nats / math.log(2) / max(nbytes, 1),
        "tokens": tokens,
    }


def read_texts(data: str) -> list[str]:
    """The non-empty documents of a dataset dir (val.jsonl), a .jsonl file (`text` field) or a text file."""
    path = Path(data)
    if path.is_dir():
        path = path / "val.jsonl"
        if not path.exists():
            raise SlmError(f"{data} has no val.jsonl (make it with `slm data ingest --val-fraction`)")
    if not path.exists():
        raise SlmError(f"data {data} does not exist")
    try:
        if path.suffix == ".jsonl":
            docs = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        docs.append(json.loads(line)["text"])
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise SlmError(f"{path}:{i} is not a JSON object with a 'text' field") from e
        else:
            docs = [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError as e:
        raise SlmError(f"{path} is not UTF-8 text") from e
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise SlmError(f"{path} holds no text")
    return docs


def token_stream(tokenizer, docs: list[str], limit: int) -> np.ndarray:
    """The documents' token ids, each followed by EOS, cut at `limit` tokens."""
    eos = tokenizer.eos_token_id
    out: list[int] = []
    for doc in docs:
        out.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            out.append(eos)
        if len(out) >= limit:
            break
    return np.asarray(out[:limit], dtype=np.int64)


def _load(name: str, device):
    from slmforge.infer.model_dirs import load

    return load(name, device=str(device))
