"""The guard's policy: personal data and prompt-injection / jailbreak detection, with an action per route.

`load_guard(cfg)` reads a config dict (the `guard:` section of serve.yaml), `Guard.check(text, route)`
returns a `Verdict`: `action` (allow | flag | redact | block, the most severe one any check asked for),
the text to pass on (personal data replaced by `[EMAIL]`, `[CARD]` ... when the route redacts; also
when it blocks, so a blocked request's text can be logged), the reasons and the scores.

    detector: auto          # auto (default): the built detector if there is one, else rules only, with a
                            # WARNING in the log and in describe()["warnings"] (shown by an authenticated
                            # /readyz); a classifier dir (torch or ONNX, from `slm classify train/export`); none
    threshold: auto         # injection probability at or above which the classifier fires; auto: the
                            # detector's own, chosen on its validation split at build time (else 0.5)
    rules: true             # regular expressions for classic attacks (see RULES)
    threads: 1              # ONNX Runtime / torch threads per check
    window_chars: 500       # the classifier scores every window of this many characters (half overlapping)
    max_chars: 65536        # a longer text is not scored at all: it is blocked with reason guard:too_long
    default: {pii: redact, injection: block}
    routes:                 # first match wins: exact name or glob (fnmatch) on the route
      /v1/embeddings: {pii: allow, injection: allow}
      /v1/pipelines/*: {pii: redact, injection: block, threshold: 0.7}

Personal data comes from `slmforge.data.pii` (emails, phones, Luhn-valid cards, mod-97 IBANs).

The injection detector is rules OR a classifier, both on `normalise(text)`: NFKC (fullwidth and styled
letters become ASCII), Unicode format characters dropped (zero-width, bidi controls) and tag characters
decoded to the ASCII they hide, Cyrillic / Greek lookalikes inside Latin words mapped to Latin, spaced or
dotted l.e.t.t.e.r.s joined, line breaks joined, and base64 segments that decode to text replaced by that
text. The rules also see accent-folded, leetspeak-mapped and ROT13 copies; the classifier also scores
the ROT13 copy when it reads more like English than the text does (the higher score counts).

The classifier (`build_detector()`, `python -m slmforge.guard`, about 3 minutes on 2 cores) is two
models whose probabilities are averaged: MiniLM fine-tuned by `slmforge.clf.train` on the hand-written set
in benchmarks/data/injection, pruned to 3 layers (healed by distillation) and exported to ONNX, and a
character n-gram TF-IDF logistic regression (which reads any script; MiniLM's vocabulary is English).
Every window of a text is scored, batched, and the highest score counts; a text over `max_chars` is
blocked with reason `guard:too_long` on any route that guards it (the serve layer caps a request's
prompt characters at the same figure before the guard runs). Measured: benchmarks/guard.py,
benchmarks/results/guard.md.

This module holds the config, the policies per route and `Guard`; normalise.py the normalisation,
rules.py the rules, detector.py the detector (loading, scoring, building, and `main`). Their public names
are re-exported here.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from slmforge.core.errors import SlmError
from slmforge.guard.detector import (
    DEFAULT_THRESHOLD,
    DETECTOR_NAME,
    GUARD_META,
    INJECTION_LABEL,
    MAX_CHARS,
    NGRAM_FILE,
    Detector,
    NgramModel,
    build_detector,
    choose_operating_point,
    component_scores,
    default_detector_path,
    main,
    resolve_detector,
    softmax,
    text_windows,
)
from slmforge.guard.normalise import classifier_variants, normalise, rot13, rule_variants
from slmforge.guard.rules import LINE_RULES, RULES, rule_hits

__all__ = [
    "DEFAULT_THRESHOLD", "DETECTOR_NAME", "GUARD_META", "INJECTION_LABEL", "LINE_RULES", "MAX_CHARS", "NGRAM_FILE",
    "RULES", "Detector", "Guard", "GuardConfig", "NgramModel", "RoutePolicy", "Verdict", "build_detector",
    "check_fields", "check_unit", "choose_operating_point", "classifier_variants", "default_detector_path",
    "load_guard", "main", "normalise", "parse_config", "rot13", "rule_hits", "rule_variants", "text_windows",
]  # fmt: skip

log = logging.getLogger("slmforge.guard")

PII_ACTIONS = ("block", "redact", "flag", "allow")
INJECTION_ACTIONS = ("block", "flag", "allow")
SEVERITY = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


@dataclass
class Verdict:
    """What the guard decided for one text."""

    action: str  # allow | flag | redact | block
    text: str  # the text to pass on (personal data redacted when the route redacts or blocks)
    reasons: list[str] = field(
        default_factory=list
    )  # e.g. "pii:card", "injection:rule:dan", "injection:model", "guard:too_long"
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
    """What personal data does to a request: block, redact, flag or allow."""
    injection: str = "block"
    """What a detected prompt injection does: block, flag or allow."""
    threshold: float | None = None
    """Injection probability at or above which the classifier fires on this route; None: the guard's
    threshold."""
    detector: str | None = None
    """A detector directory for this route; None: the guard's detector."""


@dataclass
class GuardConfig:
    detector: str | None = "auto"
    """auto (the built detector if there is one, else rules only, with a warning), a classifier dir (torch or
    ONNX, from `slm classify train/export`), or None: rules only."""
    threshold: float | None = None
    """Injection probability at or above which the classifier fires; None (auto): the detector's validated
    threshold, else 0.5."""
    rules: bool = True
    """Regular expressions for classic attacks (see RULES)."""
    threads: int = 1
    """ONNX Runtime / torch threads per check."""
    window_chars: int = 500
    """The classifier scores every window of this many characters (half overlapping)."""
    max_chars: int = MAX_CHARS
    """A longer text is not scored at all: it is blocked with reason guard:too_long."""
    batch_size: int = 32
    """Windows the classifier scores per forward pass."""
    default: RoutePolicy = field(default_factory=RoutePolicy)
    """The policy of every route no entry of `routes` matches."""
    routes: dict[str, RoutePolicy] = field(default_factory=dict)
    """Route name or glob (fnmatch) -> its policy; the first match wins."""


def load_guard(cfg: dict | None) -> Guard:
    """A Guard from the `guard:` config dict (None or {}: defaults; see the module docstring)."""
    return Guard(parse_config(cfg or {}))


def parse_config(raw: dict) -> GuardConfig:
    if not isinstance(raw, dict):
        raise SlmError(f"guard: expected a mapping, got {type(raw).__name__}")
    top = {
        "detector", "threshold", "rules", "threads", "window_chars", "max_chars", "batch_size", "default",
        "routes",
    }  # fmt: skip
    check_fields(raw, top, "guard")
    cfg = GuardConfig()
    if "detector" in raw:
        d = raw["detector"]
        if d is not None and not isinstance(d, str):
            raise SlmError("guard.detector: expected a path, 'auto' or 'none'")
        cfg.detector = None if d is None or str(d).lower() in ("none", "off", "") else str(d)
    if "threshold" in raw and not (isinstance(raw["threshold"], str) and raw["threshold"] == "auto"):
        cfg.threshold = None if raw["threshold"] is None else check_unit(raw["threshold"], "guard.threshold")
    if "rules" in raw:
        if not isinstance(raw["rules"], bool):
            raise SlmError("guard.rules: expected true or false")
        cfg.rules = raw["rules"]
    for key in ("threads", "window_chars", "max_chars", "batch_size"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SlmError(f"guard.{key}: expected a positive integer, got {value!r}")
            setattr(cfg, key, value)
    if cfg.window_chars < 16:
        raise SlmError(f"guard.window_chars: expected at least 16, got {cfg.window_chars}")
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
        self._models: dict[str, Detector] = {}
        self._lock = threading.Lock()  # a fast tokenizer must not be called from two threads at once
        self.warnings: list[str] = []
        self.detector = self._resolve(cfg.detector, "guard.detector")
        if cfg.detector == "auto" and self.detector is None:
            message = (
                f"guard.detector is auto but no detector is built at {default_detector_path()}: injection "
                "detection is rules only (build it with `python3 -m slmforge.guard`)"
            )
            log.warning(message)
            self.warnings.append(message)
        for route, policy in cfg.routes.items():
            if policy.detector:
                self._resolve(policy.detector, f"guard.routes[{route!r}].detector")
        if self.detector:
            self._model(self.detector)  # load at start-up, not on the first request

    def _resolve(self, detector: str | None, where: str) -> str | None:
        return resolve_detector(detector, where)

    def _model(self, path: str) -> Detector:
        if path not in self._models:
            self._models[path] = Detector(path, self.cfg.threads)
        return self._models[path]

    def policy(self, route: str) -> RoutePolicy:
        for pattern, policy in self.cfg.routes.items():
            if route == pattern or fnmatch.fnmatchcase(route, pattern):
                return policy
        return self.cfg.default

    def threshold(self, detector: str | None = None, policy: RoutePolicy | None = None) -> float:
        if policy is not None and policy.threshold is not None:
            return policy.threshold
        if self.cfg.threshold is not None:
            return self.cfg.threshold
        detector = detector or self.detector
        return self._model(detector).threshold if detector else DEFAULT_THRESHOLD

    def describe(self) -> dict:
        """What the guard runs with, and `warnings` (empty when nothing is amiss)."""
        model = self._models.get(self.detector) if self.detector else None
        return {
            "detector": self.detector or "rules only",
            "ngram_model": bool(model and model.ngram),
            "threshold": self.threshold(),
            "rules": self.cfg.rules,
            "max_chars": self.cfg.max_chars,
            "warnings": list(self.warnings),
        }

    def check(self, text: str, route: str = "default") -> Verdict:
        from slmforge.data.pii import redact

        started = time.perf_counter()
        policy = self.policy(route)
        action, reasons, scores = "allow", [], {}
        out = text
        if (policy.pii != "allow" or policy.injection != "allow") and len(text) > self.cfg.max_chars:
            scores["guard_ms"] = (time.perf_counter() - started) * 1000
            return Verdict("block", "", ["guard:too_long"], scores)  # unread: nothing of it is passed on

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
                threshold = self.threshold(detector, policy)
                p = self._score_against(text, detector, threshold)
                scores["injection"] = p
                if p >= threshold:
                    reasons.append("injection:model")
                    hit = True
            if hit:
                action = _worse(action, policy.injection)

        scores["guard_ms"] = (time.perf_counter() - started) * 1000
        return Verdict(action, out, reasons, scores)

    def _score_against(self, text: str, detector: str, threshold: float) -> float:
        """The injection score as far as deciding `score >= threshold` needs it: the n-gram model scores
        every window first, and the encoder runs only on windows where it could lift the average to the
        threshold (w * 1 + (1 - w) * p_ngram >= threshold). Exact when it reaches the threshold; below it,
        windows the encoder skipped count with their n-gram part alone (a lower bound). Ordinary text,
        whose n-gram score is low, costs no encoder pass."""
        model = self._model(detector)
        windows = [
            w
            for v in classifier_variants(text[: self.cfg.max_chars])
            for w in text_windows(v, self.cfg.window_chars)
        ]
        if model.ngram is None:
            with self._lock:
                return float(model.scores(windows, self.cfg.batch_size)[0].max())
        w = model.weight
        p_ngram = model.ngram.proba(windows)
        best = float(((1 - w) * p_ngram).max())
        reach = np.flatnonzero(w + (1 - w) * p_ngram >= threshold)
        if len(reach):
            with self._lock:
                logits = model.clf.logits([windows[i] for i in reach], batch_size=self.cfg.batch_size)
            p_enc = softmax(logits)[:, model.index]
            best = max(best, float((w * p_enc + (1 - w) * p_ngram[reach]).max()))
        return best

    def injection_score(self, text: str, detector: str | None = None) -> float:
        """The detector's injection probability: the highest over every window of every classifier variant
        of the text (see classifier_variants), scored in batches."""
        return float(self.injection_scores([text], detector)[0])

    def injection_scores(self, texts: list[str], detector: str | None = None) -> np.ndarray:
        """injection_score for many texts at once (their windows batched together)."""
        return self.component_scores(texts, detector)["combined"]

    def component_scores(self, texts: list[str], detector: str | None = None) -> dict[str, np.ndarray]:
        """Per text, the highest window score of each model alone (for benchmarks and threshold choice)."""
        model = self._model(detector or self.detector)
        return component_scores(model, texts, self.cfg.window_chars, self.cfg.max_chars, self.cfg.batch_size,
                                self._lock)  # fmt: skip


def _worse(a: str, b: str) -> str:
    return a if SEVERITY[a] >= SEVERITY[b] else b
