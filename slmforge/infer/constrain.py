"""Constrained decoding: what a reply must be (JSON under a schema, any JSON object, a regex, one of some
strings, a Lark grammar), enforced as a token mask on the logits of every step.

The grammar engine is LLGuidance (the `llguidance` package, the engine behind ONNX Runtime GenAI's and
vLLM's guided decoding), never our own: `Constraint` holds the constraint's text and is checked by
LLGuidance's compiler when made (a schema feature it does not implement is refused by name); `Guide` is one
row's matcher during a decode. A compiled matcher is cached per (tokenizer, EOS ids, constraint) and copied
per row (a copy costs ~1 µs, compiling ~0.5 ms; the tokenizer's LLGuidance view ~0.4 s for a 49k vocab).

The mask allows an EOS id only where the matcher accepts, so a reply ends only when it is complete; when the
matcher can take no more text the reply ends there (only EOS could follow). A constraint that no token can
start or continue stops the decode with an `SlmError` naming where, never with invalid output.

JSON is generated in one line with ", " and ": " separators (LLGuidance's `whitespace_flexible` off): valid
JSON either way, and a small model cannot loop on whitespace inside an object. A schema may override this
with LLGuidance's own `x-guidance` key.
"""

from __future__ import annotations

import functools
import json
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slmforge.core.errors import SlmError

KINDS = ("json_schema", "json_object", "regex", "choice", "lark")
FLAGS = {"json_schema": "--json-schema", "json_object": "--json-object", "regex": "--regex",
         "choice": "--choice", "grammar": "--grammar"}  # fmt: skip
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Constraint:
    """What a reply must be. Make one with `json_schema`, `json_object`, `regex`, `choice`, `lark`,
    `from_config` (the CLI's fields) or `from_response_format` (OpenAI's request field); each is checked
    by LLGuidance's compiler on creation and raises `SlmError` with the compiler's reason.

    `text` is the schema as compact JSON (property order kept: it is the order of generation), the
    regex, the choices as a JSON list, or the Lark grammar."""

    kind: str
    text: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SlmError(f"unknown constraint kind {self.kind!r}; one of {', '.join(KINDS)}")
        error = _llg().LLMatcher.validate_grammar(self.grammar())
        if error:
            raise SlmError(f"{self.describe()}: {self._reason(error)}")

    @classmethod
    def json_schema(cls, schema) -> Constraint:
        """JSON valid under `schema` (a dict, a bool, or its JSON text)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise SlmError(f"the JSON schema is not valid JSON ({e})") from None
        if not isinstance(schema, dict | bool):
            raise SlmError(f"a JSON Schema is an object or a boolean, not {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema, ensure_ascii=False))

    @classmethod
    def json_object(cls) -> Constraint:
        """Any JSON object."""
        return cls("json_object", '{"type": "object"}')

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        """Text that the regular expression matches whole (Rust `regex` syntax; no lookaround)."""
        return cls("regex", pattern)

    @classmethod
    def choice(cls, options: list[str]) -> Constraint:
        """Exactly one of `options`."""
        options = list(dict.fromkeys(options))
        if not options:
            raise SlmError("a choice constraint needs at least one string to choose from")
        if any(not isinstance(o, str) or not o for o in options):
            raise SlmError("every choice must be a non-empty string")
        return cls("choice", json.dumps(options, ensure_ascii=False))

    @classmethod
    def lark(cls, grammar: str) -> Constraint:
        """Text of a Lark grammar (LLGuidance's dialect: `start:` rule, `%json {schema}` allowed)."""
        return cls("lark", grammar)

    @classmethod
    def from_config(cls, cfg) -> Constraint | None:
        """The constraint a `GenerateConfig`'s fields ask for (at most one of them), else None."""
        given = [name for name in FLAGS if getattr(cfg, name, None) not in (None, False)]
        if len(given) > 1:
            raise SlmError(f"give one constraint, not {' and '.join(FLAGS[n] for n in given)}")
        if not given:
            return None
        name = given[0]
        value = getattr(cfg, name)
        if name == "json_schema":
            text = _read(value, "--json-schema")
            try:
                return cls.json_schema(text)
            except SlmError as e:
                raise SlmError(f"--json-schema {value}: {e}") from None
        if name == "json_object":
            return cls.json_object()
        if name == "regex":
            return cls.regex(value)
        if name == "choice":
            return cls.choice(value)
        return cls.lark(_read(value, "--grammar"))

    @classmethod
    def from_response_format(cls, response_format: dict | None) -> Constraint | None:
        """OpenAI's `response_format`: `{"type": "json_schema", "json_schema": {"schema": ..., "strict": ...}}`
        (the schema is enforced whatever `strict` says), `{"type": "json_object"}`, or `{"type": "text"}`
        / None (no constraint)."""
        if not response_format:
            return None
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":
            return cls.json_object()
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or "schema" not in spec:
                raise SlmError("response_format json_schema needs json_schema.schema")
            return cls.json_schema(spec["schema"])
        raise SlmError(f"response_format type must be text, json_object or json_schema, not {kind!r}")

    def _reason(self, error: str) -> str:
        """LLGuidance's compiler message, said for this kind of constraint."""
        reason = _one_line(error)
        if self.kind == "regex":  # positions are in LLGuidance's wrapper grammar, not in the regex
            return _POSITION_TEXT.sub("", reason)
        unsupported = re.fullmatch(r"Unimplemented keys: \[(.*)\]", reason)
        if unsupported:
            keywords = unsupported[1].replace('"', "")
            return f"uses JSON Schema keywords LLGuidance does not support: {keywords}"
        if self.kind in ("json_schema", "json_object"):
            return f"not a JSON Schema LLGuidance can compile: {reason}"
        return reason

    def grammar(self) -> str:
        """The constraint as an LLGuidance grammar (what `LLMatcher` compiles)."""
        llg = _llg()
        if self.kind in ("json_schema", "json_object"):
            return llg.LLMatcher.grammar_from_json_schema(self.text, defaults=JSON_LAYOUT)
        if self.kind == "regex":
            return llg.LLMatcher.grammar_from_regex(self.text)
        if self.kind == "choice":
            return llg.grammar_from("choice", self.text)
        return llg.LLMatcher.grammar_from_lark(self.text)

    def describe(self) -> str:
        """A short name for messages: "regex 'a+'", "the JSON schema", ..."""
        if self.kind == "regex":
            return f"regex {self.text!r}"
        if self.kind == "choice":
            return f"the choice among {len(json.loads(self.text))} strings"
        return {"json_schema": "the JSON schema", "json_object": "JSON object", "lark": "the Lark grammar"}[
            self.kind
        ]


class Guide:
    """One row's constraint during a decode: masks its logits, follows its tokens."""

    def __init__(self, constraint: Constraint, tokenizer, eos_ids: list[int]):
        self.constraint = constraint
        self.tokenizer = tokenizer
        self.matcher = compiled(constraint, tokenizer, eos_ids).deep_copy()
        self.ids: list[int] = []
        self._bitmask: bytes | None = None  # this step's, one bit per token

    def allows(self, token: int) -> bool:
        """Whether the mask allows `token` next: one bit of LLGuidance's bitmask (~7 us to compute), not the
        masked logits (~100 us more), so a greedy pick checks the model's own argmax first."""
        bitmask = self._step_bitmask()
        return token < 8 * len(bitmask) and bool(bitmask[token >> 3] >> (token & 7) & 1)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of `logits` with every token the constraint does not allow next set to -inf."""
        bits = np.unpackbits(np.frombuffer(self._step_bitmask(), np.uint8), bitorder="little")
        n = logits.shape[-1]
        bits = bits[:n] if len(bits) >= n else np.pad(bits, (0, n - len(bits)))
        if not bits.any():
            self._dead_end("no token the model has can continue it")
        if logits.device.type == "cpu":  # numpy's boolean assignment: about a third of masked_fill's time
            out = logits.numpy().copy()
            out[bits == 0] = -np.inf
            return torch.from_numpy(out)
        allowed = torch.from_numpy(bits).to(logits.device).bool()
        return torch.where(allowed, logits, float("-inf"))

    def advance(self, token: int) -> None:
        """Take the token picked under the mask."""
        self.matcher.consume_token(token)
        self.ids.append(token)
        self._bitmask = None
        self._check()

    @property
    def done(self) -> bool:
        """Nothing but EOS can follow: the reply is complete."""
        return self.matcher.is_stopped() and self.matcher.is_accepting()

    @property
    def satisfied(self) -> bool:
        """The text so far is a whole reply the constraint allows."""
        return self.matcher.is_accepting() and not self.matcher.is_error()

    def _step_bitmask(self) -> bytes:
        if self._bitmask is None:
            self._bitmask = self.matcher.compute_bitmask()
            self._check()
        return self._bitmask

    def _check(self) -> None:
        if self.matcher.is_error():
            reason = _one_line(self.matcher.get_error())
            if reason.startswith("NoExtension"):
                reason = "no text can continue it"
            self._dead_end(reason)

    def _dead_end(self, reason: str) -> None:
        if not self.ids:
            raise SlmError(f"no output satisfies {self.constraint.describe()} with this tokenizer: {reason}")
        so_far = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        raise SlmError(
            f"{self.constraint.describe()} reached a dead end after {len(self.ids)} tokens ({so_far!r}): {reason}"
        )


def compiled(constraint: Constraint, tokenizer, eos_ids: list[int]):
    """The compiled LLGuidance matcher of `constraint` for this tokenizer, fresh (copy it per row); cached.

    Its first mask is computed once here, so a constraint no token can start fails before decoding."""
    matcher = _compile(_lltokenizer(tokenizer, tuple(sorted(set(eos_ids)))), constraint)
    if matcher.is_error():
        error = _one_line(matcher.get_error())
        raise SlmError(f"no output satisfies {constraint.describe()} with this tokenizer: {error}")
    return matcher


@functools.lru_cache(maxsize=128)
def _compile(lltok, constraint: Constraint):
    llg = _llg()
    matcher = llg.LLMatcher(lltok, constraint.grammar(), log_level=0)
    if not matcher.is_error():
        probe = matcher.deep_copy()
        probe.compute_bitmask()
        if probe.is_error():
            reason = _one_line(probe.get_error())
            reason = "no text can start it" if reason.startswith("NoExtension") else reason
            raise SlmError(f"no output satisfies {constraint.describe()} with this tokenizer: {reason}")
    return matcher


_LLTOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lltokenizer(tokenizer, eos: tuple[int, ...]):
    """LLGuidance's view of a Hugging Face fast tokenizer with these EOS ids, built once per tokenizer."""
    by_eos = _LLTOKENIZERS.setdefault(tokenizer, {})
    if eos not in by_eos:
        from llguidance.hf import from_tokenizer

        try:
            by_eos[eos] = from_tokenizer(tokenizer, eos_token=list(eos))
        except ValueError as e:  # a slow (Python) tokenizer
            raise SlmError(f"constrained decoding needs a fast (tokenizers) tokenizer: {e}") from None
    return by_eos[eos]


def _llg():
    try:
        import llguidance
    except ImportError:
        raise SlmError("constrained decoding needs llguidance: run `pip install llguidance`") from None
    return llguidance


def _read(path: str, flag: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise SlmError(f"{flag}: no such file {path}")
    return p.read_text(encoding="utf-8")


_POSITION = re.compile(r"^at (\d+)\((\d+)\): ")
_POSITION_TEXT = re.compile(r"^line \d+, column \d+: ")


def _one_line(message: str) -> str:
    """LLGuidance's message on one line: its first line, with a regex parser's own reason and "line L,
    column C" for "at L(C)"; source excerpts (`1 | ...`, `^`) are left out."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    if not lines:
        return "rejected by LLGuidance"
    first = _POSITION.sub(lambda m: f"line {m[1]}, column {m[2]}: ", lines[0])
    reason = next((ln for ln in lines[1:] if ln.startswith("error: ")), None)
    if reason is not None:  # "invalid regex "a(b" (in regex): regex parse error:" ... "error: unclosed group"
        first = re.sub(r"\s*\(in \w+\)", "", first.split(": regex parse error")[0])
        first = f"{first}: {reason.removeprefix('error: ')}"
    return first
