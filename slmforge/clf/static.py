"""`--arch static`: a static-embedding table distilled from the encoder (model2vec), then a linear head.

model2vec's `distill` runs every token of the encoder's vocabulary through the encoder once (mean pooling),
reduces the outputs with PCA to `dims` columns and weights each row by its token's frequency rank (SIF):
a vocabulary x 256 table. A text's embedding is then the l2-normalised mean of its tokens' rows, with no
matrix multiply in the encoder, and the classifier is a logistic regression on that embedding (the
`LinearHead` of `slmforge.clf.train`, its regularisation chosen on the validation split). Saved in the model
directory beside `classifier.json` (`"arch": "static"`) and `slmforge.json`:

    tokenizer.json        the distilled vocabulary's tokenizer (the encoder's, less its [unused] tokens)
    static.json           dims, the encoder it came from, the unknown-token id, max tokens, model2vec version
    static.safetensors    `embeddings` (vocabulary x dims, float16), `weight` (labels x dims), `bias` (labels)

Loading needs only `tokenizers`, NumPy and safetensors (model2vec is needed to distill, not to run). The
table of an encoder is distilled once (about a minute on one core for minilm-l6's 29,525 tokens) and kept
in `$SLMFORGE_HOME/cache/static/`. Distilling reads only the local encoder directory (the catalog's, or a
hub id resolved first as for fine-tuning): no download.

ONNX export is refused: the model is a table lookup, a mean and one 256 x labels product that run on NumPy
in well under a millisecond; ONNX Runtime would add its call overhead and no speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError

CONFIG_FILE = "static.json"
WEIGHTS_FILE = "static.safetensors"
TOKENIZER_FILE = "tokenizer.json"
DIMS = 256
"""PCA dimensions of the distilled table (model2vec's default)."""
MAX_TOKENS = 512
"""Tokens of a text that count (model2vec's default truncation)."""
CS = (0.1, 1.0, 10.0, 100.0)
"""Regularisation strengths of the head tried on the validation split (the best is kept; ties: the smaller)."""
DEFAULT_C = 10.0
"""The head's C without validation data."""
ONNX_REFUSAL = (
    "a static classifier has no ONNX export: it is a table lookup, a mean and one linear layer that run "
    "on NumPy in well under a millisecond, without torch or ONNX Runtime"
)
INSTALL = "pip install 'slmforge[static]' (model2vec and skeletoken)"


@dataclass
class StaticModel:
    """The distilled table and its tokenizer, and the linear head on the mean of a text's rows."""

    tokenizer: object  # tokenizers.Tokenizer
    embeddings: np.ndarray  # (vocabulary, dims), float32 in memory
    weight: np.ndarray  # (labels, dims)
    bias: np.ndarray  # (labels,)
    info: dict  # static.json

    def __post_init__(self):
        self.embeddings = np.ascontiguousarray(self.embeddings, np.float32)
        self._weight_t = np.ascontiguousarray(self.weight.T, np.float32)
        self._unk = self.info.get("unk_id")
        self._max = int(self.info.get("max_tokens", MAX_TOKENS))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._words = _is_bert_uncased(self.tokenizer)
        self._cache: dict[str, list[int]] = {}

    @property
    def dims(self) -> int:
        return int(self.embeddings.shape[1])

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids (no special tokens, unknown tokens dropped, at most MAX_TOKENS).

        An ASCII text for an uncased BERT tokenizer takes a shortcut with the same result: lower-cased and
        cleaned of control characters in Python, split into words and punctuation as BertPreTokenizer does
        on ASCII, each word's pieces from a cache (the tokenizer's own WordPiece on a miss). The tokenizer's
        Rust normalizer is most of a query's time otherwise (0.19 of 0.21 ms on a 658-character text)."""
        out: list[list[int] | None] = [None] * len(texts)
        rest = []
        for i, text in enumerate(texts):
            if self._words and text.isascii():
                out[i] = self._ascii_ids(text)
            else:
                rest.append(i)
        if rest:
            encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)  # no offsets
            encs = encode([texts[i] for i in rest], add_special_tokens=False)
            for i, enc in zip(rest, encs):
                ids = enc.ids
                if self._unk is not None:
                    ids = [t for t in ids if t != self._unk]
                out[i] = ids[: self._max]
        return out

    def _ascii_ids(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for word in _ASCII_WORD.findall(_ASCII_CONTROL.sub("", text).lower()):
            pieces = cache.get(word)
            if pieces is None:
                if len(cache) > 200_000:
                    cache.clear()
                pieces = self.tokenizer.encode(word, add_special_tokens=False).ids
                if self._unk is not None:
                    pieces = [t for t in pieces if t != self._unk]
                cache[word] = pieces
            ids.extend(pieces)
            if len(ids) >= self._max:
                break
        return ids[: self._max]

    def embed(self, texts: list[str]) -> np.ndarray:
        """The l2-normalised mean of each text's token rows (zeros for a text with no known token)."""
        out = np.zeros((len(texts), self.dims), np.float32)
        for row, ids in enumerate(self.token_ids(texts)):
            if ids:
                v = self.embeddings[ids].mean(0)
                n = float(np.sqrt(v @ v))
                out[row] = v / n if n > 0 else v
        return out

    def logits(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.bias)), np.float32)
        return self.embed(texts) @ self._weight_t + self.bias

    def save(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        self.tokenizer.save(str(directory / TOKENIZER_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(self.info, indent=1))
        save_file(
            {
                "embeddings": self.embeddings.astype(np.float16),
                "weight": np.ascontiguousarray(self.weight, np.float32),
                "bias": np.ascontiguousarray(self.bias, np.float32),
            },
            str(directory / WEIGHTS_FILE),
        )

    @classmethod
    def load(cls, directory: Path) -> StaticModel:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        directory = Path(directory)
        tensors = load_file(str(directory / WEIGHTS_FILE))
        return cls(
            tokenizer=Tokenizer.from_file(str(directory / TOKENIZER_FILE)),
            embeddings=tensors["embeddings"],
            weight=tensors["weight"],
            bias=tensors["bias"],
            info=json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8")),
        )


_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""What BertNormalizer's clean_text drops from ASCII (control characters other than tab, newline, return)."""
_ASCII_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
"""BertPreTokenizer on lower-cased ASCII: runs of letters and digits; every other visible character alone."""


def _is_bert_uncased(tokenizer) -> bool:
    """Whether the shortcut of `StaticModel.token_ids` holds: BertNormalizer (clean_text, lowercase),
    BertPreTokenizer and WordPiece, as minilm-l6's and every uncased BERT's."""
    spec = json.loads(tokenizer.to_str())
    norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    return (
        norm.get("type") == "BertNormalizer"
        and norm.get("lowercase") is True
        and norm.get("clean_text") is True
        and pre.get("type") == "BertPreTokenizer"
        and (spec.get("model") or {}).get("type") == "WordPiece"
    )


def distilled_table(base: str, dims: int = DIMS, progress: bool = True) -> tuple[object, np.ndarray, dict]:
    """(tokenizer, float16 table, info) of encoder `base` distilled by model2vec, from the cache or made now."""
    from tokenizers import Tokenizer

    from slmforge.clf.io import encoder_config
    from slmforge.core.fsutil import atomic_dir
    from slmforge.core.paths import home
    from slmforge.core.progress import bar, say

    try:
        import model2vec
        from model2vec.distill import distill
    except ImportError as e:
        raise SlmError(f"--arch static needs model2vec's distillation: {INSTALL} ({e})") from None
    base_dir, config = encoder_config(base)
    if config.model_type != "bert":
        raise SlmError(
            f"--arch static distils a BERT-family sentence encoder; {base} is a {config.model_type!r} model"
        )
    base_dir = Path(base_dir).resolve()
    key = hashlib.sha256(f"{base_dir}|{dims}|{model2vec.__version__}".encode()).hexdigest()[:16]
    cache = home() / "cache" / "static" / f"{base_dir.name}-{dims}-{key}"
    if not (cache / WEIGHTS_FILE).exists():
        say(progress, f"distilling {base} into a static table ({dims} dims; once, kept in {cache})")
        import model2vec.distill.inference as m2v_inference
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        saved_env, saved_tqdm = os.environ.get("HF_HUB_OFFLINE"), m2v_inference.tqdm
        os.environ["HF_HUB_OFFLINE"] = "1"  # a local directory: nothing to fetch
        try:
            with bar("distil (model2vec)", total=len(_vocab_of(base_dir)) or None, enabled=progress) as b:
                m2v_inference.tqdm = lambda *a, **k: _BarAdapter(b)  # its token bar drawn as ours
                static = distill(str(base_dir), pca_dims=dims, device="cpu")
        except SlmError:
            raise
        except Exception as e:
            raise SlmError(f"model2vec could not distill {base}: {str(e).splitlines()[0][:200]}") from None
        finally:
            m2v_inference.tqdm = saved_tqdm
            if saved_env is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = saved_env
        info = {
            "encoder": base,
            "encoder_dir": str(base_dir),
            "dims": int(static.embedding.shape[1]),
            "unk_id": static.unk_token_id,
            "max_tokens": MAX_TOKENS,
            "model2vec": model2vec.__version__,
            "sif_coefficient": static.config.get("sif_coefficient"),
        }
        from safetensors.numpy import save_file

        with atomic_dir(cache, overwrite=True) as tmp:
            static.tokenizer.save(str(tmp / TOKENIZER_FILE))
            save_file({"embeddings": np.asarray(static.embedding, np.float16)}, str(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=1))
    from safetensors.numpy import load_file

    table = load_file(str(cache / WEIGHTS_FILE))["embeddings"]
    info = json.loads((cache / CONFIG_FILE).read_text())
    return Tokenizer.from_file(str(cache / TOKENIZER_FILE)), table, info


class _BarAdapter:
    """What model2vec calls on its tqdm bar (update, close, context manager), forwarded to ours."""

    def __init__(self, b):
        self.b = b

    def update(self, n: int = 1) -> None:
        self.b.advance(n)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _vocab_of(base_dir: Path) -> dict:
    """The encoder's vocabulary (from its tokenizer.json; empty when it has none)."""
    path = base_dir / TOKENIZER_FILE
    if not path.exists():
        return {}
    import re

    vocab = json.loads(path.read_text(encoding="utf-8")).get("model", {}).get("vocab", {}) or {}
    return {t: i for t, i in vocab.items() if not re.fullmatch(r"\[unused\d+\]", t)}  # distill drops those


def fit_static(
    base: str,
    texts: list[str],
    y: np.ndarray,
    n_labels: int,
    val_texts: list[str] = (),
    y_val: np.ndarray | None = None,
    dims: int = DIMS,
    seed: int = 0,
    progress: bool = True,
) -> tuple[StaticModel, str]:
    """The static model of `base` with a head fitted on `texts`; and a sentence on how C was chosen."""
    from slmforge.clf.head import fit_linear_head

    tokenizer, table, info = distilled_table(base, dims, progress)
    probe = StaticModel(tokenizer, table, np.zeros((n_labels, table.shape[1])), np.zeros(n_labels), info)
    x = probe.embed(list(texts))
    if len(val_texts) and y_val is not None and len(y_val):
        xv = probe.embed(list(val_texts))
        best = None
        for c in CS:  # ascending: a tie keeps the stronger regularisation
            h = fit_linear_head(x, y, n_labels, seed, c=c)
            acc = float((h.predict(xv) == y_val).mean())
            if best is None or acc > best[0]:
                best = (acc, c, h)
        _, chosen, head = best
        why = f"head C = {chosen:g}, the best of {', '.join(f'{c:g}' for c in CS)} on validation"
    else:
        head = fit_linear_head(x, y, n_labels, seed, c=DEFAULT_C)
        why = f"head C = {DEFAULT_C:g} (no validation data to choose it on)"
    return StaticModel(tokenizer, table, head.weight, head.bias, info), why


def is_static(path: Path) -> bool:
    """Whether `path` holds a `--arch static` classifier."""
    return (Path(path) / WEIGHTS_FILE).exists() and (Path(path) / CONFIG_FILE).exists()
