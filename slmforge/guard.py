"""The input guard: personal data and prompt-injection / jailbreak detection, with an action per route.

`load_guard(cfg)` reads a config dict (the `guard:` section of serve.yaml), `Guard.check(text, route)`
returns a `Verdict`: `action` (allow | flag | redact | block, the most severe one any check asked for),
the text to pass on (personal data replaced by `[EMAIL]`, `[CARD]` ... when the route redacts; also
when it blocks, so a blocked request's text can be logged), the reasons and the scores.

    detector: auto          # auto (default): the built detector if there is one, else rules only;
                            # a classifier dir (torch or ONNX, from `slm classify train/export/quantize`); none
    threshold: 0.5          # injection probability at or above which the classifier fires
    rules: true             # regular expressions for classic attacks (see RULES)
    threads: 1              # ONNX Runtime / torch threads per check
    default: {pii: redact, injection: block}
    routes:                 # first match wins: exact name or glob (fnmatch) on the route
      /v1/embeddings: {pii: allow, injection: allow}
      /v1/pipelines/*: {pii: redact, injection: block, threshold: 0.7}

Personal data comes from `slmforge.pii` (emails, phones, Luhn-valid cards, mod-97 IBANs). The injection
detector is rules OR a small classifier: MiniLM fine-tuned by `slmforge.classify` on the hand-written
set in benchmarks/data/injection, pruned to 3 layers (healed by distillation) and exported to ONNX;
`build_detector()` (`python -m slmforge.guard`) makes it in about 3 minutes on 2 cores. Long texts are
scored in overlapping windows (the highest score counts), so an attack at the end of a long message is
not truncated away. Measured (benchmarks/guard.py, benchmarks/results/guard.md): 98.5 % TPR at 3.6 % FPR
on the held-out split, 5.6 ms p50 added per request with one thread.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmforge.errors import SlmError

PII_ACTIONS = ("block", "redact", "flag", "allow")
INJECTION_ACTIONS = ("block", "flag", "allow")
SEVERITY = {"allow": 0, "flag": 1, "redact": 2, "block": 3}
INJECTION_LABEL = "injection"
DETECTOR_NAME = "guard-injection"
REPO = Path(__file__).resolve().parents[1]
TRAIN_DATA = REPO / "benchmarks" / "data" / "injection" / "train.csv"
BANK_INTENTS = REPO / "examples" / "bank" / "intents.csv"  # 196 benign customer requests, also used as benign

# Classic attack phrasings. Matched case-insensitively on the text and on a normalised copy (leetspeak
# digits mapped to letters, s p a c e d letters joined), so trivial obfuscation does not slip through.
_W = r"[^.\n]{0,40}?"  # a few words on the same sentence
RULES = {
    "ignore_instructions": re.compile(
        rf"\b(ignore|disregard|forget|override|bypass|skip|drop)\b{_W}\b(previous|prior|above|earlier|"
        rf"preceding|all|your|the|any|system|safety)\b{_W}\b(instructions?|prompts?|rules|directions|"
        rf"guidelines|directives|polic(y|ies)|restrictions|safeguards|filters)\b",
        re.I,
    ),
    "prompt_leak": re.compile(
        rf"\b(reveal|print|show|repeat|output|echo|display|tell me|what is|what's|give me)\b{_W}"
        r"\b(system\s+(prompt|message)|(initial|original|hidden|secret|confidential)\s+(prompt|instructions|rules))",
        re.I,
    ),
    "repeat_above": re.compile(
        r"\b(repeat|print|output)\b[^.\n]{0,20}\b(text|everything|words)\s+(above|before)", re.I
    ),
    "persona_jailbreak": re.compile(
        r"\bdo anything now\b|\b(developer|debug|god|jailbreak|unrestricted)\s+mode\b|\bjailbr(eak|oken)\b|"
        r"\b(with|has|have)\s+(no|zero)\s+(content\s+)?(restrictions|filters|polic(y|ies)|ethical guidelines)\b|"
        r"\bwithout any (content\s+)?(restrictions|filters|polic(y|ies))\b",
        re.I,
    ),
    "dan": re.compile(r"\b(DAN|STAN)\b"),  # the classic persona names, upper case only
    "chat_markup": re.compile(
        r"<\|(im_start|im_end|system|endoftext|eot_id|start_header_id)\|>|\[/?INST\]|<</?SYS>>|</?system>|"
        r"^\s*#{2,}\s*(system|instruction)\s*:|\bnew system (message|prompt)\b",
        re.I | re.M,
    ),
    "foreign_ignore": re.compile(
        r"\b(ignoriere|ignorieren|ignora|ignorez|oublie[zr]?|olvida|vergiss)\b.{0,30}"
        r"\b(anweisungen|instrucciones|instructions|istruzioni|instruções|consignes|regeln)\b",
        re.I,
    ),
}
_LEET = str.maketrans("0134579@$", "oieastgas")
_SPACED = re.compile(r"\b(?:\w ){3,}\w\b")


@dataclass
class Verdict:
    """What the guard decided for one text."""

    action: str  # allow | flag | redact | block
    text: str  # the text to pass on (personal data redacted when the route redacts or blocks)
    reasons: list[str] = field(
        default_factory=list
    )  # e.g. "pii:card", "injection:rule:dan", "injection:model"
    scores: dict[str, float] = field(default_factory=dict)  # injection (model), pii (count), guard_ms

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "text": self.text,
            "reasons": list(self.reasons),
            "scores": dict(self.scores),
        }


@dataclass
class RoutePolicy:
    pii: str = "redact"
    injection: str = "block"
    threshold: float | None = None  # None: the guard's threshold
    detector: str | None = None  # None: the guard's detector


@dataclass
class GuardConfig:
    detector: str | None = "auto"
    threshold: float = 0.5
    rules: bool = True
    threads: int = 1
    window_chars: int = 500
    max_windows: int = 8
    default: RoutePolicy = field(default_factory=RoutePolicy)
    routes: dict[str, RoutePolicy] = field(default_factory=dict)


def default_detector_path() -> Path:
    from slmforge.hub import models_dir

    return models_dir() / DETECTOR_NAME


def load_guard(cfg: dict | None) -> Guard:
    """A Guard from the `guard:` config dict (None or {}: defaults; see the module docstring)."""
    return Guard(parse_config(cfg or {}))


def parse_config(raw: dict) -> GuardConfig:
    if not isinstance(raw, dict):
        raise SlmError(f"guard: expected a mapping, got {type(raw).__name__}")
    top = {"detector", "threshold", "rules", "threads", "window_chars", "max_windows", "default", "routes"}
    check_fields(raw, top, "guard")
    cfg = GuardConfig()
    if "detector" in raw:
        d = raw["detector"]
        if d is not None and not isinstance(d, str):
            raise SlmError("guard.detector: expected a path, 'auto' or 'none'")
        cfg.detector = None if d is None or str(d).lower() in ("none", "off", "") else str(d)
    if "threshold" in raw:
        cfg.threshold = check_unit(raw["threshold"], "guard.threshold")
    if "rules" in raw:
        if not isinstance(raw["rules"], bool):
            raise SlmError("guard.rules: expected true or false")
        cfg.rules = raw["rules"]
    for key in ("threads", "window_chars", "max_windows"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SlmError(f"guard.{key}: expected a positive integer, got {value!r}")
            setattr(cfg, key, value)
    cfg.default = _policy(raw.get("default") or {}, "guard.default")
    routes = raw.get("routes") or {}
    if not isinstance(routes, dict):
        raise SlmError("guard.routes: expected a mapping of route -> {pii, injection}")
    cfg.routes = {str(r): _policy(p or {}, f"guard.routes[{r!r}]") for r, p in routes.items()}
    return cfg


def _policy(raw, where: str) -> RoutePolicy:
    if not isinstance(raw, dict):
        raise SlmError(f"{where}: expected a mapping like {{pii: redact, injection: block}}")
    check_fields(raw, {"pii", "injection", "threshold", "detector"}, where)
    p = RoutePolicy()
    if "pii" in raw:
        p.pii = _choice(raw["pii"], PII_ACTIONS, f"{where}.pii")
    if "injection" in raw:
        p.injection = _choice(raw["injection"], INJECTION_ACTIONS, f"{where}.injection")
    if "threshold" in raw:
        p.threshold = check_unit(raw["threshold"], f"{where}.threshold")
    if "detector" in raw:
        if not isinstance(raw["detector"], str):
            raise SlmError(f"{where}.detector: expected a path")
        p.detector = raw["detector"]
    return p


def _choice(value, allowed: tuple, where: str) -> str:
    if value is False:  # YAML reads a bare `off` / `no` as false
        value = "allow"
    if not isinstance(value, str) or value.lower() not in allowed:
        raise SlmError(f"{where}: must be one of {', '.join(allowed)}, got {value!r}")
    return value.lower()


def check_unit(value, where: str) -> float:
    """A config number in [0, 1], or a one-line error naming where it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise SlmError(f"{where}: expected a number in [0, 1], got {value!r}")
    return float(value)


def check_fields(raw: dict, allowed: set, where: str) -> None:
    """Refuse config fields outside `allowed`, naming the first one."""
    extra = sorted(str(k) for k in raw if k not in allowed)
    if extra:
        raise SlmError(f"{where}: unknown field {extra[0]!r} (expected {', '.join(sorted(allowed))})")


class Guard:
    """Checks texts per route; loads each detector model once."""

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()  # a fast tokenizer must not be called from two threads at once
        self.detector = self._resolve(cfg.detector, "guard.detector")
        for route, policy in cfg.routes.items():
            if policy.detector:
                self._resolve(policy.detector, f"guard.routes[{route!r}].detector")
        if self.detector:
            self._model(self.detector)  # load at start-up, not on the first request

    def _resolve(self, detector: str | None, where: str) -> str | None:
        if detector is None:
            return None
        if detector == "auto":
            path = default_detector_path()
            return str(path) if (path / "classifier.json").exists() else None
        path = Path(detector).expanduser()
        if not (path / "classifier.json").exists():
            raise SlmError(
                f"{where}: {detector} is not a classifier directory (build one with build_detector)"
            )
        return str(path)

    def _model(self, path: str):
        if path not in self._models:
            from slmforge.classify import load_classifier

            clf = load_classifier(path, threads=self.cfg.threads)
            if INJECTION_LABEL not in clf.labels:
                raise SlmError(
                    f"guard detector {path} has no {INJECTION_LABEL!r} label (labels: {clf.labels})"
                )
            self._models[path] = clf
        return self._models[path]

    def policy(self, route: str) -> RoutePolicy:
        for pattern, policy in self.cfg.routes.items():
            if route == pattern or fnmatch.fnmatchcase(route, pattern):
                return policy
        return self.cfg.default

    def describe(self) -> dict:
        return {
            "detector": self.detector or "rules only",
            "threshold": self.cfg.threshold,
            "rules": self.cfg.rules,
        }

    def check(self, text: str, route: str = "default") -> Verdict:
        from slmforge.pii import redact

        started = time.perf_counter()
        policy = self.policy(route)
        action, reasons, scores = "allow", [], {}
        out = text

        if policy.pii != "allow":
            redacted, counts = redact(text)
            found = sum(counts.values())
            scores["pii"] = float(found)
            if found:
                reasons += [f"pii:{kind}" for kind, n in counts.items() if n]
                action = _worse(action, policy.pii)
                if policy.pii in ("redact", "block"):
                    out = redacted

        if policy.injection != "allow":
            hit = False
            if self.cfg.rules:
                rules = rule_hits(text)
                scores["injection_rule"] = 1.0 if rules else 0.0
                reasons += [f"injection:rule:{r}" for r in rules]
                hit = bool(rules)
            detector = self._resolve(policy.detector, "detector") if policy.detector else self.detector
            if detector:
                p = self.injection_score(text, detector)
                scores["injection"] = p
                threshold = self.cfg.threshold if policy.threshold is None else policy.threshold
                if p >= threshold:
                    reasons.append("injection:model")
                    hit = True
            if hit:
                action = _worse(action, policy.injection)

        scores["guard_ms"] = (time.perf_counter() - started) * 1000
        return Verdict(action, out, reasons, scores)

    def injection_score(self, text: str, detector: str | None = None) -> float:
        """The detector's injection probability: the highest over the text's windows."""
        clf = self._model(detector or self.detector)
        windows = text_windows(text, self.cfg.window_chars, self.cfg.max_windows)
        with self._lock:
            logits = clf.logits(windows, batch_size=len(windows))
        probs = _softmax(logits)[:, clf.labels.index(INJECTION_LABEL)]
        return float(probs.max())


def _worse(a: str, b: str) -> str:
    return a if SEVERITY[a] >= SEVERITY[b] else b


def normalise(text: str) -> str:
    """Leetspeak digits to letters and s p a c e d letters joined: what the rules also look at."""
    text = _SPACED.sub(lambda m: m.group().replace(" ", ""), text)
    return text.translate(_LEET)


def rule_hits(text: str) -> list[str]:
    """Names of the RULES that match `text` or its normalised form."""
    variants = (text, normalise(text))
    return [name for name, pattern in RULES.items() if any(pattern.search(v) for v in variants)]


def text_windows(text: str, size: int, limit: int) -> list[str]:
    """The text itself when short; else overlapping windows of `size` chars (at most `limit`, spread evenly
    over the text, the first and the last included)."""
    text = text.strip() or "."
    if len(text) <= size:
        return [text]
    step = size // 2
    starts = list(range(0, len(text) - size + 1, step))
    if starts[-1] != len(text) - size:
        starts.append(len(text) - size)
    if len(starts) > limit:
        picks = np.linspace(0, len(starts) - 1, limit).round().astype(int)
        starts = [starts[i] for i in picks]
    return [text[s : s + size] for s in starts]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ---------------------------------------------------------------- building the detector


def build_detector(
    out: str | None = None,
    data: str | None = None,
    extra_benign: list[str] | None = None,
    extra_text_col: str = "text",
    layers: int | None = 3,
    epochs: int = 1,
    heal_epochs: int = 2,
    max_len: int = 128,
    quantize: bool = False,
    threads: int | None = None,
    max_minutes: float | None = 4,
    progress: bool = True,
    overwrite: bool = True,
) -> dict:
    """Train the injection detector with slmforge's own workflows; return where it went and its metrics.

    1. `slm classify train` on `data` (default benchmarks/data/injection/train.csv) plus `extra_benign`
       CSVs (column `extra_text_col`; every row labelled benign: add your own benign traffic; default:
       examples/bank/intents.csv, pass [] for none), base minilm-l6;
    2. `slm prune --layers 3` (no vocabulary trimming: an attack's unseen words must not become [UNK]),
       healed by distillation from step 1's model for `heal_epochs` (`layers=None` skips this step);
    3. `slm export --format onnx`, verified against torch; `quantize=True` then `slm quantize` (uint8
       weights; 99.0 % TPR at 3.6 % FPR, see benchmarks/results/guard.md).

    `out` (default `$SLMFORGE_HOME/models/guard-injection`) is what `detector: auto` loads.
    """
    import tempfile

    from slmforge.classify import ClassifyTrainConfig, train_classifier
    from slmforge.compress import CompressConfig, prune
    from slmforge.export import ExportConfig, export
    from slmforge.quantize import QuantizeConfig
    from slmforge.quantize import quantize as quantize_model

    started = time.perf_counter()
    out_path = Path(out) if out else default_detector_path()
    data = data or str(TRAIN_DATA)
    if not Path(data).is_file():
        raise SlmError(f"injection training data {data} does not exist")
    if extra_benign is None:
        extra_benign = [str(BANK_INTENTS)] if BANK_INTENTS.exists() else []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp:
        if extra_benign:
            data = _merge_benign(data, extra_benign, extra_text_col, Path(tmp) / "train.csv")
        model_dir = Path(tmp) / "torch"
        trained = train_classifier(
            ClassifyTrainConfig(
                data=data, out=str(model_dir), epochs=epochs, max_len=max_len, threads=threads,
                max_minutes=max_minutes, val_fraction=0.1,
            ),
            progress=progress,
        )  # fmt: skip
        info = {"teacher_val_accuracy": trained.val_accuracy, "train_examples": trained.train_examples}
        if layers:
            pruned = Path(tmp) / f"torch-{layers}l"
            healed = prune(
                CompressConfig(
                    teacher=str(model_dir), data=data, out=str(pruned), layers=layers, trim_vocab=False,
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
        if quantize:
            metrics = quantize_model(
                QuantizeConfig(model=str(model_dir), out=str(out_path), overwrite=overwrite)
            )
        else:
            metrics = export(ExportConfig(model=str(model_dir), out=str(out_path), overwrite=overwrite))
    return {
        "out": str(out_path),
        **info,
        "precision": metrics.get("precision"),
        "verify_top1_agreement": metrics.get("verify_top1_agreement"),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def _merge_benign(data: str, extra: list[str], text_col: str, out: Path) -> str:
    import csv

    from slmforge.classify import read_examples

    texts, labels = read_examples(data, "text", "label")
    for path in extra:
        if not Path(path).is_file():
            raise SlmError(f"benign texts file {path} does not exist")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or text_col not in rows[0]:
            raise SlmError(f"{path} has no column {text_col!r}")
        texts += [r[text_col] for r in rows if r[text_col].strip()]
    labels += ["benign"] * (len(texts) - len(labels))
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return str(out)


if (
    __name__ == "__main__"
):  # python -m slmforge.guard [--out DIR] [--extra-benign CSV ...]: build the detector
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
    a = ap.parse_args()
    print(build_detector(a.out, extra_benign=a.extra_benign, layers=a.layers or None, threads=a.threads))
