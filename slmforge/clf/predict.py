"""Run a trained classifier: `slm classify predict`, and the one interface evaluation and serving use.

`load_classifier` opens a directory from `slm classify train`, `slm export` or `slm quantize`: a
`TfidfClassifier` for `--arch tfidf` (scikit-learn features, NumPy weights), a `StaticClassifier` for
`--arch static` (a token table and a NumPy head), else a `Classifier` (ONNX
Runtime when it holds `model.onnx`, else torch). `ClassifierBase.decide` applies the calibrated
out-of-scope threshold, below which the label is `oos`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slmforge.clf.examples import OOS
from slmforge.clf.io import META
from slmforge.core.errors import SlmError

SCORES = ("maxprob", "energy")
"""The out-of-scope scores `--oos-score` chooses from (see `oos_score`)."""


def predict(model: str, texts: list[str], threads: int | None = None, batch_size: int = 64) -> list[dict]:
    """Label each text: [{"text", "label", "score"}]; `score` is the softmax probability of the label.

    `model` is a directory from `slm classify train`, `slm export` or `slm quantize` (ONNX is used when the
    directory holds `model.onnx`). With a calibrated OOS threshold, low-confidence texts get label `oos`.
    """
    clf = load_classifier(model, threads)
    if not texts:
        return []
    for i, t in enumerate(texts):
        if not t or not t.strip():
            raise SlmError(f"text {i + 1} is empty")
    logits = clf.logits(texts, batch_size)
    labels = clf.decide(logits)
    probs = _softmax(logits)
    return [{"text": t, "label": lab, "score": float(p.max())} for t, lab, p in zip(texts, labels, probs)]


class ClassifierBase:
    """What every saved classifier offers: its labels and `classifier.json`, logits, decisions, token counts."""

    path: Path
    meta: dict
    labels: list[str]
    runtime: str

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        raise NotImplementedError

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens (features, for tfidf) each text gives the model."""
        raise NotImplementedError

    def params(self) -> int:
        raise NotImplementedError

    def decide(self, logits: np.ndarray) -> list[str]:
        labels = [self.labels[i] for i in logits.argmax(1)] if len(logits) else []
        oos = self.meta.get("oos")
        if oos and oos.get("threshold") is not None:
            flagged = oos_score(logits, oos["score"]) < oos["threshold"]
            labels = [OOS if f else lab for lab, f in zip(labels, flagged)]
        return labels


class TfidfClassifier(ClassifierBase):
    """A `--arch tfidf` directory (`slmforge.clf.tfidf`): scikit-learn features, a NumPy linear layer."""

    runtime = "sklearn"

    def __init__(self, path: Path, meta: dict):
        from slmforge.clf.tfidf import TfidfModel

        self.path, self.meta = path, meta
        self.labels = meta["labels"]
        self.max_len = meta.get("max_len")
        self.model = TfidfModel.load(path)

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.model.logits(texts)

    def token_counts(self, texts: list[str]) -> list[int]:
        x = self.model.features(texts)
        return [int(n) for n in np.diff(x.indptr)]

    def params(self) -> int:
        return int(self.model.weight.size + self.model.bias.size)


class StaticClassifier(ClassifierBase):
    """A `--arch static` directory (`slmforge.clf.static`): a token table, its tokenizer, a NumPy head."""

    runtime = "numpy"

    def __init__(self, path: Path, meta: dict):
        from slmforge.clf.static import StaticModel

        self.path, self.meta = path, meta
        self.labels = meta["labels"]
        self.max_len = meta.get("max_len")
        self.model = StaticModel.load(path)

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.model.logits(texts)

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.model.token_ids(texts)]

    def params(self) -> int:
        m = self.model
        return int(m.embeddings.size + m.weight.size + m.bias.size)


class Classifier(ClassifierBase):
    """A trained classifier behind one interface: torch (HF directory) or ONNX Runtime (`model.onnx`)."""

    def __init__(self, path: Path, threads: int | None = None, meta: dict | None = None):
        from transformers import AutoTokenizer

        import slmforge.clf.model  # noqa: F401  (registers the model type: no remote-code prompt)

        self.path = path
        self.meta = meta if meta is not None else read_meta(path)
        self.labels: list[str] = self.meta["labels"]
        self.max_len: int = self.meta["max_len"]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.onnx = (path / "model.onnx").exists()
        if self.onnx:
            import onnxruntime as ort

            from slmforge.core.runtime import free_cores

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = min(threads or free_cores(), free_cores())
            opts.inter_op_num_threads = 1
            self.session = ort.InferenceSession(
                str(path / "model.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            self.input_names = {i.name for i in self.session.get_inputs()}
            self.runtime = "onnxruntime"
        else:
            import torch

            from slmforge.core.runtime import set_threads

            set_threads(threads)
            from transformers import AutoModelForSequenceClassification
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
            self._torch = torch
            self.runtime = "torch"

    def token_counts(self, texts: list[str]) -> list[int]:
        return [
            len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_len)["input_ids"]
        ]

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=self.max_len,
                padding=True,
                return_tensors="np",
            )
            out.append(self._run(enc))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), "float32")

    def _run(self, enc) -> np.ndarray:
        if self.onnx:
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in self.input_names}
            if "token_type_ids" in self.input_names and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            return self.session.run(["logits"], feed)[0]
        torch = self._torch
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in enc.items()}
            return self.model(**inputs).logits.float().numpy()

    def params(self) -> int:
        """Parameters of the model (an int8 export counts its fp32 source's, not its scale tensors)."""
        from slmforge.core import workspace

        known = workspace.read_manifest(self.path).get("metrics", {}).get("params") or self.meta.get("params")
        if self.onnx and known:
            return int(known)
        if self.onnx:
            import onnx

            graph = onnx.load(str(self.path / "model.onnx"), load_external_data=False).graph
            return int(sum(np.prod(t.dims) for t in graph.initializer))
        return sum(p.numel() for p in self.model.parameters())


def read_meta(path: Path) -> dict:
    """`classifier.json` of a text classifier directory; SlmError for anything else."""
    meta_path = path / META
    if not meta_path.exists():
        raise SlmError(f"{path} is not a classifier from `slm classify train` (no {META})")
    meta = json.loads(meta_path.read_text())
    if meta.get("task") == "tokens":
        raise SlmError(
            f"{path} is a token classifier: `slm classify predict` lists its entity spans and "
            "`slm eval --task extraction` scores it"
        )
    return meta


def load_classifier(model: str, threads: int | None = None) -> ClassifierBase:
    """The classifier in `model` (a directory, or its model.onnx): tfidf, static, torch or ONNX Runtime."""
    path = Path(model)
    if path.is_file() and path.suffix == ".onnx":
        path = path.parent
    if not path.is_dir():
        raise SlmError(f"no classifier at {model}")
    meta = read_meta(path)
    if meta.get("arch") == "tfidf":
        return TfidfClassifier(path, meta)
    if meta.get("arch") == "static":
        return StaticClassifier(path, meta)
    return Classifier(path, threads, meta)


def oos_score(logits: np.ndarray, kind: str) -> np.ndarray:
    """Higher = more in-scope."""
    if kind == "energy":
        m = logits.max(1, keepdims=True)
        return (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
    return _softmax(logits).max(1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
