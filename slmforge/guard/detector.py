"""The guard's prompt-injection detector: loading and scoring it, and building it.

A built detector is a directory holding two models whose probabilities are averaged: MiniLM fine-tuned by
`slmforge.clf.train` on the hand-written set in benchmarks/data/injection, pruned to 3 layers (healed by
distillation) and exported to ONNX, and a character n-gram TF-IDF logistic regression (`ngram.npz`, which
reads any script; MiniLM's vocabulary is English), with `guard.json` saying how the two combine and the
threshold chosen on validation data. Every window of a text (`text_windows`) of every classifier variant
(`classifier_variants`) is scored, batched, and the highest score counts (`component_scores`).

`build_detector()` (`python -m slmforge.guard`, which runs `main` here; about 3 minutes on 2 cores)
trains it with slmforge's own workflows. Measured: benchmarks/guard.py, benchmarks/results/guard.md.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError
from slmforge.guard.normalise import classifier_variants, normalise
from slmforge.guard.rules import rule_hits

INJECTION_LABEL = "injection"
DETECTOR_NAME = "guard-injection"
NGRAM_FILE = "ngram.npz"  # the n-gram model: arrays only, loaded without pickle
GUARD_META = "guard.json"  # how the two models combine and the threshold chosen on validation data
DEFAULT_THRESHOLD = 0.5
MAX_CHARS = 65536
WINDOW_CHARS, BATCH_SIZE = 500, 32  # GuardConfig's defaults, which the threshold is chosen with
REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "benchmarks" / "data" / "injection"
TRAIN_DATA = DATA_DIR / "train.csv"
VAL_DATA = DATA_DIR / "val.csv"
BANK_INTENTS = REPO / "examples" / "bank" / "intents.csv"  # 196 benign customer requests, also used as benign
_WS2 = re.compile(r"\s\s+")  # scikit-learn's char_wb analyzer collapses these before splitting


def default_detector_path() -> Path:
    from slmforge.core.hub import models_dir

    return models_dir() / DETECTOR_NAME


def resolve_detector(detector: str | None, where: str) -> str | None:
    """The directory a `detector:` setting names: None for none, the built one (or None when there is
    none) for `auto`, else the given classifier directory (a one-line error naming `where` if it is not)."""
    if detector is None:
        return None
    if detector == "auto":
        path = default_detector_path()
        return str(path) if (path / "classifier.json").exists() else None
    path = Path(detector).expanduser()
    if not (path / "classifier.json").exists():
        raise SlmError(f"{where}: {detector} is not a classifier directory (build one with build_detector)")
    return str(path)


# ---------------------------------------------------------------- loading and scoring


class NgramModel:
    """Character n-gram TF-IDF + logistic regression, stored as plain arrays (no pickle to load).

    Fitted with scikit-learn (`TfidfVectorizer(analyzer="char_wb", sublinear_tf=True)`); scored here with
    the same features computed directly, which is several times faster on one short text than the
    vectorizer's own transform (tests/guard/test_guard.py checks the two agree)."""

    def __init__(self, path: Path):
        with np.load(path, allow_pickle=False) as z:
            terms = z["terms"]
            self.idf = z["idf"].astype(np.float64)
            self.coef = z["coef"].astype(np.float64)
            self.intercept = float(z["intercept"])
            self.lo, self.hi = (int(v) for v in z["ngram_range"])
        self.vocab = {str(t): i for i, t in enumerate(terms)}
        self.weight = self.coef * self.idf  # tf-idf then dot coef = tf . (idf * coef), before the l2 norm

    def proba(self, texts: list[str]) -> np.ndarray:
        return np.array([self._proba(t) for t in texts])

    def _proba(self, text: str) -> float:
        counts: dict[int, int] = {}
        vocab, lo, hi = self.vocab, self.lo, self.hi
        for word in _WS2.sub(" ", text.lower()).split():
            w = f" {word} "
            for n in range(lo, hi + 1):
                if len(w) < n:
                    break
                for k in range(len(w) - n + 1):
                    j = vocab.get(w[k : k + n])
                    if j is not None:
                        counts[j] = counts.get(j, 0) + 1
        if not counts:
            return 1.0 / (1.0 + np.exp(-self.intercept))
        idx = np.fromiter(counts, int, len(counts))
        tf = 1.0 + np.log(np.fromiter(counts.values(), float, len(counts)))
        norm = np.sqrt(np.sum((tf * self.idf[idx]) ** 2))
        z = float(tf @ self.weight[idx]) / norm + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    @staticmethod
    def fit(texts: list[str], y: np.ndarray, out: Path, ngram_range=(2, 5), c: float = 4.0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        vec = TfidfVectorizer(
            analyzer="char_wb", ngram_range=ngram_range, lowercase=True, sublinear_tf=True, min_df=2,
            max_features=200_000, dtype=np.float64,
        )  # fmt: skip
        x = vec.fit_transform(texts)
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x, y)
        terms = np.array(sorted(vec.vocabulary_, key=vec.vocabulary_.get))
        with open(out, "wb") as f:
            np.savez_compressed(
                f, terms=terms, idf=vec.idf_, coef=lr.coef_[0], intercept=np.float64(lr.intercept_[0]),
                ngram_range=np.array(ngram_range),
            )  # fmt: skip


class Detector:
    """A built detector directory: the MiniLM classifier, and the n-gram model and guard.json when present."""

    def __init__(self, path: str, threads: int):
        from slmforge.clf.predict import load_classifier

        self.path = path
        self.clf = load_classifier(path, threads=threads)
        if INJECTION_LABEL not in self.clf.labels:
            raise SlmError(
                f"guard detector {path} has no {INJECTION_LABEL!r} label (labels: {self.clf.labels})"
            )
        meta_path = Path(path) / GUARD_META
        self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        ngram = Path(path) / NGRAM_FILE
        self.ngram = NgramModel(ngram) if ngram.exists() else None
        self.weight = float(self.meta.get("encoder_weight", 0.5)) if self.ngram else 1.0
        self.index = self.clf.labels.index(INJECTION_LABEL)

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", DEFAULT_THRESHOLD))

    def scores(self, windows: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Per window: the encoder's injection probability, and the n-gram model's (None without one)."""
        p_enc = softmax(self.clf.logits(windows, batch_size=batch_size))[:, self.index]
        return p_enc, (self.ngram.proba(windows) if self.ngram else None)

    def combine(self, p_enc: np.ndarray, p_ngram: np.ndarray | None) -> np.ndarray:
        return p_enc if p_ngram is None else self.weight * p_enc + (1 - self.weight) * p_ngram


def text_windows(text: str, size: int) -> list[str]:
    """The text itself when short; else every window of `size` chars, each starting half a window after
    the last (the final one ends at the text's end), so every phrase shorter than half a window lies whole
    inside some window; and the same at `size // 3`, so a short attack inside a long text is not diluted
    by as much surrounding text (the classifier was trained on texts of a few sentences)."""
    text = text.strip() or "."
    if len(text) <= size:
        return [text]
    return _windows(text, size) + _windows(text, max(16, size // 3))


def _windows(text: str, size: int) -> list[str]:
    step = size // 2
    starts = list(range(0, len(text) - size + 1, step))
    if starts[-1] != len(text) - size:
        starts.append(len(text) - size)
    return [text[s : s + size] for s in starts]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def component_scores(
    model: Detector,
    texts: list[str],
    window_chars: int = WINDOW_CHARS,
    max_chars: int = MAX_CHARS,
    batch_size: int = BATCH_SIZE,
    lock=None,
) -> dict[str, np.ndarray]:
    """Per text, the highest window score of each model alone (`encoder`, `ngram` when the detector has
    one) and of their average (`combined`), over every classifier variant of the text's first `max_chars`
    characters; the models run under `lock` (a fast tokenizer must not be called from two threads)."""
    out = {
        "encoder": np.zeros(len(texts)),
        "ngram": np.zeros(len(texts)),
        "combined": np.zeros(len(texts)),
    }
    windows, owner = [], []
    for i, text in enumerate(texts):
        for variant in classifier_variants(text[:max_chars]):
            w = text_windows(variant, window_chars)
            windows += w
            owner += [i] * len(w)
    owner = np.array(owner)
    with lock if lock is not None else contextlib.nullcontext():
        p_enc, p_ngram = model.scores(windows, batch_size)
    np.maximum.at(out["encoder"], owner, p_enc)
    np.maximum.at(out["combined"], owner, model.combine(p_enc, p_ngram))
    if p_ngram is not None:
        np.maximum.at(out["ngram"], owner, p_ngram)
    else:
        del out["ngram"]
    return out


# ---------------------------------------------------------------- building the detector


def build_detector(
    out: str | None = None,
    data: str | None = None,
    val: str | None = None,
    extra_benign: list[str] | None = None,
    extra_text_col: str = "text",
    layers: int | None = 3,
    epochs: int = 1,
    heal_epochs: int = 2,
    max_len: int = 128,
    target_fpr: float = 0.01,
    quantize: bool = False,
    threads: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    overwrite: bool = True,
) -> dict:
    """Train the injection detector with slmforge's own workflows; return where it went and its metrics.

    Every text is `normalise()`d first, as the guard will see it.
    1. `slm classify train` on `data` (default benchmarks/data/injection/train.csv) plus `extra_benign`
       CSVs (column `extra_text_col`; every row labelled benign: add your own benign traffic; default:
       examples/bank/intents.csv, pass [] for none), base minilm-l6, validated on `val` (default
       benchmarks/data/injection/val.csv: template families of their own, in neither train nor held-out);
    2. `slm prune --layers 3` (no vocabulary trimming: an attack's unseen words must not become [UNK]),
       healed by distillation from step 1's model for `heal_epochs` (`layers=None` skips this step);
    3. `slm export --format onnx`, verified against torch; `quantize=True` then `slm quantize`;
    4. a character n-gram TF-IDF logistic regression on the same texts (`ngram.npz`);
    5. on the validation split, the weight of the two models' average and the threshold: the lowest
       threshold at which the guard as deployed (rules OR the average) flags at most `target_fpr` of the
       benign texts, the weight the one with the highest recall there (`guard.json`).

    `out` (default `$SLMFORGE_HOME/models/guard-injection`) is what `detector: auto` loads.
    """
    import shutil
    import tempfile

    from slmforge.core.fsutil import atomic_dir, write_json
    from slmforge.core.workspace import forget_under
    from slmforge.ship.export import ExportConfig, export
    from slmforge.ship.quantize import QuantizeConfig
    from slmforge.ship.quantize import quantize as quantize_model

    started = time.perf_counter()
    out_path = Path(out) if out else default_detector_path()
    val = val or (str(VAL_DATA) if VAL_DATA.exists() else None)
    texts, labels, val_texts, val_labels = _training_texts(data or str(TRAIN_DATA), val, extra_benign,
                                                           extra_text_col)  # fmt: skip
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp:
        train_csv = _write_csv(Path(tmp) / "train.csv", [normalise(t) for t in texts], labels)
        val_csv = (
            _write_csv(Path(tmp) / "val.csv", [normalise(t) for t in val_texts], val_labels) if val else None
        )
        model_dir, info = _train_encoder(Path(tmp), train_csv, val_csv, layers, epochs, heal_epochs, max_len,
                                         threads, max_minutes, progress)  # fmt: skip
        staged = Path(tmp) / "detector"
        if quantize:
            metrics = quantize_model(QuantizeConfig(model=str(model_dir), out=str(staged)))
        else:
            metrics = export(ExportConfig(model=str(model_dir), out=str(staged)))
        y = np.array([lab == INJECTION_LABEL for lab in labels])
        NgramModel.fit([normalise(t) for t in texts], y, staged / NGRAM_FILE)
        meta = {"threshold": DEFAULT_THRESHOLD, "encoder_weight": 0.5, "target_fpr": target_fpr}
        if val_texts:
            meta |= choose_operating_point(
                str(staged), val_texts, val_labels, target_fpr, threads or 1, _languages(val)
            )
        write_json(staged / GUARD_META, meta)
        with atomic_dir(out_path, overwrite=overwrite) as final:
            for item in staged.iterdir():
                shutil.move(str(item), final / item.name)
        forget_under(
            tmp
        )  # the intermediate models trained in tmp are gone with it: no "missing" rows in `slm ls`
    return {
        "out": str(out_path),
        **info,
        **{k: meta[k] for k in ("threshold", "encoder_weight") if k in meta},
        "val": meta.get("val"),
        "precision": metrics.get("precision"),
        "verify_top1_agreement": metrics.get("verify_top1_agreement"),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def _training_texts(
    data: str, val: str | None, extra_benign: list[str] | None, extra_text_col: str
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(texts, labels, validation texts, validation labels) for build_detector, as written (not normalised)."""
    from slmforge.clf.examples import read_examples

    for path, what in ((data, "injection training data"), (val, "injection validation data")):
        if path is not None and not Path(path).is_file():
            raise SlmError(f"{what} {path} does not exist")
    if extra_benign is None:
        extra_benign = [str(BANK_INTENTS)] if BANK_INTENTS.exists() else []
    texts, labels = read_examples(data, "text", "label")
    texts += _read_benign(extra_benign, extra_text_col)
    labels += ["benign"] * (len(texts) - len(labels))
    val_texts, val_labels = read_examples(val, "text", "label") if val else ([], [])
    return texts, labels, val_texts, val_labels


def _train_encoder(
    tmp: Path,
    train_csv: str,
    val_csv: str | None,
    layers: int | None,
    epochs: int,
    heal_epochs: int,
    max_len: int,
    threads: int | None,
    max_minutes: float | None,
    progress: bool,
) -> tuple[Path, dict]:
    """build_detector's steps 1 and 2 in `tmp`: (the torch model to export, what to report of it)."""
    from slmforge.clf.compress import CompressConfig, prune
    from slmforge.clf.configs import ClassifyTrainConfig
    from slmforge.clf.train import train_classifier

    model_dir = tmp / "torch"
    trained = train_classifier(
        ClassifyTrainConfig(
            data=train_csv, val=val_csv, out=str(model_dir), epochs=epochs, max_len=max_len,
            threads=threads, max_minutes=max_minutes, val_fraction=0.1, patience=2,
            ship_baseline=False, few_shot_below=0,  # an encoder to prune and export; its own n-gram model
        ),
        progress=progress,
    )  # fmt: skip
    info = {"teacher_val_accuracy": trained.val_accuracy, "train_examples": trained.train_examples}
    if layers:
        pruned = tmp / f"torch-{layers}l"
        healed = prune(
            CompressConfig(
                teacher=str(model_dir), data=train_csv, out=str(pruned), layers=layers, trim_vocab=False,
                epochs=heal_epochs, threads=threads,
            ),
            progress=progress,
        )  # fmt: skip
        info |= {
            "layers": layers,
            "val_accuracy": healed.get("val_accuracy"),
            "params": healed.get("params"),
        }
        model_dir = pruned
    return model_dir, info


def choose_operating_point(
    detector: str,
    texts: list[str],
    labels: list[str],
    target_fpr: float,
    threads: int = 1,
    languages: list[str] | None = None,
) -> dict:
    """The encoder weight and threshold (see build_detector step 5) on a labelled validation set.

    With `languages` (one per text), the threshold also keeps each language's benign FPR at or under
    `target_fpr`: the English-vocabulary encoder scores ordinary non-English requests high, and an
    overall budget of 1 % on a mostly English set would let all of it fall on one language."""
    if languages is not None and len(languages) != len(texts):
        languages = None
    model = Detector(resolve_detector(detector, "guard.detector"), threads)
    y = np.array([lab == INJECTION_LABEL for lab in labels])
    parts = component_scores(model, texts)
    rule = np.array([bool(rule_hits(t)) for t in texts])
    best = None
    for weight in (0.0, 0.25, 0.5, 0.75, 1.0):
        p = (
            weight * parts["encoder"] + (1 - weight) * parts["ngram"]
            if "ngram" in parts
            else parts["encoder"]
        )
        t = lowest_threshold(p, rule, y, target_fpr)
        for lang in sorted(set(languages or ())):
            m = np.array([g == lang for g in languages])
            if (rule & ~y & m).sum() <= np.floor(target_fpr * (~y & m).sum()):  # rules alone keep it
                t = max(t, lowest_threshold(p[m], rule[m], y[m], target_fpr))
        pred = rule | (p >= t)
        point = {
            "encoder_weight": weight,
            "threshold": round(float(t), 4),
            "val": {"recall": float(pred[y].mean()), "fpr": float(pred[~y].mean()), "texts": len(texts)},
        }
        # the best recall; on a tie the lower FPR, then the weight nearer an even average
        key = (point["val"]["recall"], -point["val"]["fpr"], -abs(weight - 0.5))
        if best is None or key > best[0]:
            best = (key, point)
        if "ngram" not in parts:
            break
    return best[1]


def lowest_threshold(p: np.ndarray, rule: np.ndarray, y: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold t at which (rule OR p >= t) flags at most `target_fpr` of the benign rows."""
    benign = p[~y & ~rule]
    allowed = int(np.floor(target_fpr * (~y).sum())) - int((rule & ~y).sum())
    if allowed < 0 or len(benign) == 0:
        return 1.0 if len(benign) else DEFAULT_THRESHOLD
    ranked = np.sort(benign)[::-1]
    if allowed >= len(ranked):
        return float(min(DEFAULT_THRESHOLD, ranked[-1]))
    return float(np.nextafter(ranked[allowed], 1.0))  # just above the first benign score not allowed


def _languages(path: str) -> list[str] | None:
    """The `language` column of a CSV validation file, or None when it has none."""
    import csv

    if not path.endswith(".csv"):
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "language" not in rows[0]:
        return None
    return [r["language"] or "?" for r in rows if r.get("text", "").strip()]


def _read_benign(paths: list[str], text_col: str) -> list[str]:
    import csv

    texts = []
    for path in paths:
        if not Path(path).is_file():
            raise SlmError(f"benign texts file {path} does not exist")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or text_col not in rows[0]:
            raise SlmError(f"{path} has no column {text_col!r}")
        texts += [r[text_col] for r in rows if r[text_col].strip()]
    return texts


def _write_csv(path: Path, texts: list[str], labels: list[str]) -> str:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return str(path)


def main(argv: list[str] | None = None) -> None:
    """python -m slmforge.guard [--out DIR] [--extra-benign CSV ...] [--if-missing]: build the detector."""
    import argparse

    ap = argparse.ArgumentParser(description=build_detector.__doc__)
    ap.add_argument(
        "--out", help="default: $SLMFORGE_HOME/models/guard-injection (what `detector: auto` loads)"
    )
    ap.add_argument(
        "--extra-benign", nargs="*", help="CSVs of benign texts (column 'text'); default: the bank intents"
    )
    ap.add_argument("--layers", type=int, default=3, help="0: keep all six layers")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--if-missing", action="store_true", help="do nothing when a detector is already there")
    ap.add_argument("--quiet", action="store_true", help="no progress bars; print one line")
    a = ap.parse_args(argv)
    target = Path(a.out) if a.out else default_detector_path()
    if a.if_missing and (target / "classifier.json").exists() and (target / GUARD_META).exists():
        print(f"guard detector already built at {target}")
        return
    try:
        made = build_detector(
            a.out,
            extra_benign=a.extra_benign,
            layers=a.layers or None,
            threads=a.threads,
            progress=not a.quiet,
        )
    except SlmError as e:
        raise SystemExit(f"error: {e}") from None
    if a.quiet:
        print(
            f"guard detector built at {made['out']} in {made['build_seconds']} s (threshold {made.get('threshold')})"
        )
    else:
        print(made)
