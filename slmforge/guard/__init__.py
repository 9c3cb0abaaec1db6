"""guard/: the input guard, on every surface that takes text (serve, pipelines, RAG chunks).

  policy.py     GuardConfig, per-route policies (pii, injection: block / redact / flag / allow), Guard, load_guard
  normalise.py  what the checks read: NFKC, format and tag characters, confusables, joined lines, base64, ROT13
  rules.py      the injection rules (phrases and line patterns) and rule_hits
  detector.py   the classifier detector (MiniLM ONNX + char n-gram model): loading, window scoring, build_detector
  __main__.py   `python3 -m slmforge.guard [--if-missing]`: build the detector (scripts/install.sh runs it)

It sits below rag/ (which guards chunks at index and answer time) and route/ (whose pipelines guard their
input), and above ship/ and clf/, whose export and training the detector build uses.
"""

from slmforge.guard.policy import (
    DEFAULT_THRESHOLD,
    DETECTOR_NAME,
    GUARD_META,
    INJECTION_LABEL,
    LINE_RULES,
    MAX_CHARS,
    NGRAM_FILE,
    RULES,
    Detector,
    Guard,
    GuardConfig,
    NgramModel,
    RoutePolicy,
    Verdict,
    build_detector,
    check_fields,
    check_unit,
    choose_operating_point,
    classifier_variants,
    default_detector_path,
    load_guard,
    main,
    normalise,
    parse_config,
    rot13,
    rule_hits,
    rule_variants,
    text_windows,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "DETECTOR_NAME",
    "GUARD_META",
    "INJECTION_LABEL",
    "LINE_RULES",
    "MAX_CHARS",
    "NGRAM_FILE",
    "RULES",
    "Detector",
    "Guard",
    "GuardConfig",
    "NgramModel",
    "RoutePolicy",
    "Verdict",
    "build_detector",
    "check_fields",
    "check_unit",
    "choose_operating_point",
    "classifier_variants",
    "default_detector_path",
    "load_guard",
    "main",
    "normalise",
    "parse_config",
    "rot13",
    "rule_hits",
    "rule_variants",
    "text_windows",
]
