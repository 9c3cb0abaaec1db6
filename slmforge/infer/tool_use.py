"""Tool calls in the form a model's chat template renders them: learnt from the template, forced by a
constraint while decoding, and read back out of the reply.

`tool_format` renders a probe call through the template (`slmforge.data.tool_calls`' probe) and finds the
JSON object of the call in the assistant turn: the text before it (Qwen2.5 / Hermes: `<tool_call>\\n`),
after it (`\\n</tool_call>`), and its two keys (`name`, and `arguments` or Llama 3.1's `parameters`), in
the template's order. `call_constraint` is a Lark grammar (LLGuidance's dialect) for exactly one call to
one of the tools (or to one named tool), its arguments under that tool's `parameters` schema; with
`mode="auto"` the reply is free text in which every call that starts (at the prefix, a lazy trigger) is
forced to be valid. `read_calls` takes the calls out of a reply, checks each against its tool's schema
with jsonschema, and reports one that fails instead of passing it on.
"""

from __future__ import annotations

import json
import secrets
import weakref
from dataclasses import dataclass, field

from slmforge.core.errors import SlmError
from slmforge.data import tool_calls
from slmforge.infer.constrain import JSON_LAYOUT, Constraint


@dataclass(frozen=True)
class ToolFormat:
    """Where a call's JSON object sits in an assistant turn, and the keys it uses."""

    prefix: str  # e.g. "<tool_call>\n"; "" when the template writes the bare object
    suffix: str  # e.g. "\n</tool_call>"
    name_key: str = "name"
    args_key: str = "arguments"
    name_first: bool = True

    @property
    def trigger(self) -> str:
        """The prefix without surrounding whitespace: where a call starts in free text ("" if none)."""
        return self.prefix.strip()


@dataclass
class ReadCalls:
    """A reply split into its text and its tool calls (OpenAI's shape), or the reason a call is invalid
    (then `calls` is empty and `content` is the whole reply)."""

    content: str | None
    calls: list[dict] = field(default_factory=list)
    error: str | None = None


_FORMATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tool_format(tokenizer) -> ToolFormat:
    """The tool-call form of this tokenizer's chat template (cached per tokenizer and template); `SlmError`
    saying what the template lacks when it cannot render tools or its calls are not a JSON object."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise SlmError("it has no chat template")
    cached = _FORMATS.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]

    def render(messages, tools, prompt):
        return tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=prompt
        )

    gap = tool_calls.template_gap(render)
    if gap:
        raise SlmError(f"its chat template {gap}")
    fmt = _learn(tokenizer, render)
    _FORMATS[tokenizer] = (template, fmt)
    return fmt


def _learn(tokenizer, render) -> ToolFormat:
    from slmforge.infer.generate import special_strings

    probe, call = tool_calls.PROBE_TOOL, tool_calls.PROBE_CALL
    name, args = call["function"]["name"], call["function"]["arguments"]
    user = {"role": "user", "content": "Look up the probe."}
    prompt = render([user], [probe], True)
    turn = render([user, {"role": "assistant", "content": "", "tool_calls": [call]}], [probe], False)
    if not turn.startswith(prompt):
        raise SlmError("its chat template renders a tool call that does not follow its generation prompt")
    tail = turn[len(prompt) :]
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(tail) if ch == "{"):
        try:
            obj, end = decoder.raw_decode(tail, start)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or len(obj) != 2:
            continue
        name_key = next((k for k, v in obj.items() if v == name), None)
        args_key = next((k for k, v in obj.items() if v == args), None)
        if name_key is None or args_key is None:
            continue
        rest = tail[end:]
        cut = min((i for s in special_strings(tokenizer) if (i := rest.find(s)) >= 0), default=len(rest))
        suffix = rest[:cut].rstrip("\n") if cut == len(rest) else rest[:cut]
        return ToolFormat(tail[:start], suffix, name_key, args_key, list(obj)[0] == name_key)
    raise SlmError("its chat template does not render a tool call as a JSON object of its name and arguments")


def call_schema(fmt: ToolFormat, tools: list[dict], only: str | None = None) -> dict:
    """The JSON schema of one call's object: the tool's name as a constant, its arguments under the
    tool's `parameters` (any object when it has none); one option per tool (or only the named one)."""
    options = []
    for tool in tools:
        fn = tool["function"]
        if only is not None and fn["name"] != only:
            continue
        params = fn.get("parameters") or {"type": "object"}
        keys = [(fmt.name_key, {"const": fn["name"]}), (fmt.args_key, params)]
        options.append({"type": "object", "properties": dict(keys if fmt.name_first else keys[::-1]),
                        "required": [fmt.name_key, fmt.args_key], "additionalProperties": False})  # fmt: skip
    if not options:
        raise SlmError(f"no tool is named {only!r}")
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": JSON_LAYOUT}


def call_constraint(
    fmt: ToolFormat, tools: list[dict], mode: str, only: str | None = None, answer: Constraint | None = None
) -> Constraint | None:
    """The constraint of a reply under `mode`:

    - "required": exactly one call (to the tool named `only`, if given);
    - "auto": free text in which a call, once its prefix appears, must be whole and valid (None when the
      template's calls have no prefix: free text, read afterwards); with `answer` (a JSON constraint from
      `response_format`), either one call or that JSON instead of free text.

    A schema feature LLGuidance does not implement raises `SlmError` naming it."""
    body = (
        f"{_lit(fmt.prefix)} %json {json.dumps(call_schema(fmt, tools, only), ensure_ascii=False)} "
        + _lit(fmt.suffix)
    )
    try:
        if mode == "required":
            return Constraint.lark(f"start: {body}\n")
        if mode != "auto":
            raise SlmError(f"tool mode must be auto or required, not {mode!r}")
        if answer is not None:
            answer_schema = json.loads(answer.text) if answer.text else {}
            if isinstance(answer_schema, dict):
                answer_schema = {**answer_schema, "x-guidance": JSON_LAYOUT}
            return Constraint.lark(
                f"start: call | answer\ncall: {body}\nanswer: %json {json.dumps(answer_schema)}\n"
            )
        if not fmt.trigger:
            return None
        lead = fmt.prefix[fmt.prefix.index(fmt.trigger) + len(fmt.trigger) :]
        rest = f"{_lit(lead)} %json {json.dumps(call_schema(fmt, tools, only), ensure_ascii=False)} " + _lit(
            fmt.suffix
        )
        return Constraint.lark(
            "%llguidance {}\n"
            "start: call* TEXT\n"
            f"call_start[lazy]: TEXT {_lit(fmt.trigger)}\n"
            f"call: call_start {rest}\n"
            "TEXT: /(.|\\n)*/\n"
        )
    except SlmError as e:
        raise SlmError(f"the tools' parameters: {e}") from None


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False) if text else ""


def read_calls(fmt: ToolFormat, text: str, tools: list[dict]) -> ReadCalls:
    """The tool calls in a reply, each checked against its tool's schema; text outside the calls is the
    content (None if only whitespace). A call that does not parse, names no tool of the request or whose
    arguments the schema rejects makes the whole reply plain text with `error` saying why."""
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    spans: list[tuple[int, int, dict]] = []  # (start, end, call object)
    decoder = json.JSONDecoder()
    if fmt.trigger:
        at = text.find(fmt.trigger)
        while at >= 0:
            pos = _skip_space(text, at + len(fmt.trigger))
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                return ReadCalls(text, error=f"a tool call is not valid JSON ({e.msg})")
            close = fmt.suffix.strip()
            after = _skip_space(text, end)
            if close:
                if not text.startswith(close, after):
                    return ReadCalls(text, error=f"a tool call does not end with {close!r}")
                end = after + len(close)
            spans.append((at, end, obj))
            at = text.find(fmt.trigger, end)
    else:
        start = _skip_space(text, 0)
        if text.startswith("{", start):
            try:
                obj, end = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                obj, end = None, 0
            if isinstance(obj, dict) and fmt.name_key in obj and not text[end:].strip():
                spans.append((start, len(text), obj))
    if not spans:
        return ReadCalls(text if text else None)
    calls = []
    for _, _, obj in spans:
        if not isinstance(obj, dict) or not isinstance(obj.get(fmt.name_key), str):
            return ReadCalls(text, error=f'a tool call is not a JSON object with a "{fmt.name_key}"')
        name = obj[fmt.name_key]
        if name not in by_name:
            return ReadCalls(
                text, error=f"a tool call names {name!r}, which is not among the request's tools"
            )
        args, reason = tool_calls.check_arguments(by_name[name], obj.get(fmt.args_key, {}))
        if reason:
            return ReadCalls(text, error=f"the call to {name} is invalid: {reason}")
        calls.append({"id": "call_" + secrets.token_hex(12), "type": "function",
                      "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}})  # fmt: skip
    pieces, last = [], 0
    for start, end, _ in spans:
        pieces.append(text[last:start])
        last = end
    pieces.append(text[last:])
    content = "".join(pieces).strip()
    return ReadCalls(content or None, calls)


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


class CallHoldback:
    """Streaming in a tool mode: passes on the text before the first call and holds back the rest (and a
    tail that may be the start of the call's prefix), so no piece of a call is streamed as content."""

    def __init__(self, fmt: ToolFormat):
        self.fmt = fmt
        self.text = ""
        self.sent = 0
        self.holding = False  # a call has started: nothing more goes out as content

    def push(self, piece: str) -> str:
        """The text that may go out now as content."""
        self.text += piece
        if self.holding:
            return ""
        trigger = self.fmt.trigger
        if not trigger:  # a bare JSON call: a reply that starts with "{" may be one
            head = self.text.lstrip()
            if not head or head.startswith("{"):
                self.holding = head.startswith("{")
                return ""
            return self._send(len(self.text))
        at = self.text.find(trigger, self.sent)
        if at >= 0:
            self.holding = True
            return self._send(at)
        keep = next((n for n in range(min(len(trigger) - 1, len(self.text)), 0, -1)
                     if self.text.endswith(trigger[:n])), 0)  # fmt: skip
        return self._send(len(self.text) - keep)

    def rest(self) -> str:
        """Whatever was held back."""
        return self._send(len(self.text))

    def _send(self, upto: int) -> str:
        out = self.text[self.sent : max(upto, self.sent)]
        self.sent = max(upto, self.sent)
        return out
