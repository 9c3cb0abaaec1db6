"""Structured replies for the OpenAI endpoints: `response_format` (text, json_object, json_schema with or
without `strict`; the schema is always enforced) and `tools` + `tool_choice` (none, auto, required, a named
function), turned into one constraint on the decode (slmforge.infer.constrain) and, after it, into
OpenAI's `tool_calls`.

- `response_format` alone: the reply is JSON under the schema (or any JSON object).
- tools, `tool_choice` "required" or a named function: the reply is exactly one call in the form the
  model's chat template writes calls (Qwen2.5 / Hermes: `<tool_call>{"name", "arguments"}</tool_call>`),
  its arguments under that tool's `parameters`; `response_format` does not apply (the reply is a call).
- tools, "auto" (the default): free text, in which a call, once its opening tag appears, must be valid;
  with `response_format`, one call or the JSON it asks for.
- tools, "none": the tools are rendered in the prompt, the reply is text (or `response_format`'s JSON).

The constraints are built once per distinct request shape (an LRU keyed by their JSON text) and LLGuidance's
compiled matcher once per constraint (slmforge.infer.constrain). Bad input is a 400 with a one-line
message: a schema that is not JSON Schema, a keyword LLGuidance does not support (named), an unknown
`response_format` type, tools for a template that cannot render them (naming the model), a `tool_choice`
naming no tool of the request or asking for a call with no tools.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slmforge.core.errors import SlmError
from slmforge.data import tool_calls
from slmforge.serve.errors import ApiError

if TYPE_CHECKING:  # the constraint engine (torch, llguidance) loads with the first request that needs it
    from slmforge.infer.constrain import Constraint

EXAMPLE_TEMPLATE = "examples/tools/chatml-tools.jinja"


@dataclass
class Plan:
    """What a chat request's reply must be and how to read it."""

    constraint: Constraint | None = None
    tools: list[dict] | None = None  # rendered into the prompt
    fmt: Any = None  # slmforge.infer.tool_use.ToolFormat, set when tool calls are read out of the reply
    response_format: dict | None = None  # passed on as is to an upstream server

    def read(self, text: str):
        """The reply's calls (slmforge.infer.tool_use.ReadCalls), or None when calls are not read."""
        if self.fmt is None:
            return None
        from slmforge.infer.tool_use import read_calls

        return read_calls(self.fmt, text, self.tools)


def response_constraint(response_format) -> Constraint | None:
    """The constraint of a request's `response_format` (a pydantic model, a dict or None); 400 if bad."""
    if response_format is None:
        return None
    raw = (
        response_format.model_dump(exclude_none=True)
        if hasattr(response_format, "model_dump")
        else response_format
    )
    try:
        return _response_constraint(json.dumps(raw, sort_keys=True, ensure_ascii=False))
    except SlmError as e:
        raise ApiError(400, str(e), param="response_format", code="invalid_response_format") from None


@functools.lru_cache(maxsize=256)
def _response_constraint(raw_json: str) -> Constraint | None:
    from slmforge.infer.constrain import Constraint

    raw = json.loads(raw_json)
    if raw.get("type") == "json_schema":
        spec = raw.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            reason = schema_problem(schema)
            if reason:
                raise SlmError(f"response_format json_schema.schema is not a valid JSON Schema ({reason})")
    return Constraint.from_response_format(raw)


def schema_problem(schema: dict) -> str | None:
    """Why `schema` is not valid under its own draft of JSON Schema (2020-12 by default), or None."""
    from jsonschema import SchemaError, validators

    if not isinstance(schema.get("$schema", ""), str):
        return '"$schema" is not a URI string'
    try:
        validators.validator_for(schema, default=validators.Draft202012Validator).check_schema(schema)
    except SchemaError as e:
        return " ".join(e.message.split())[:200]
    return None


def plan_chat(b, body, model: str) -> Plan:
    """The plan of a chat request on backend `b` (run off the event loop: it may render the template and
    compile grammars); ApiError 400 for bad input."""
    upstream = not callable(getattr(b, "tool_format", None))
    raw_format = body.response_format.model_dump(exclude_none=True) if body.response_format else None
    answer = None if upstream else response_constraint(body.response_format)
    choice = body.tool_choice
    named = choice.function.name if hasattr(choice, "function") else None
    mode = "required" if named else (choice or "auto")
    tools = body.tools
    if tools is None:
        if mode == "required":
            what = f"names the function {named!r}" if named else "is required"
            raise ApiError(400, f"tool_choice {what}, but the request has no tools", param="tool_choice")
        return Plan(answer, response_format=raw_format)
    reason = tool_calls.check_tools(tools)
    if reason:
        raise ApiError(400, reason if reason.startswith('"tools"') else f"tools: {reason}", param="tools")
    if upstream:
        raise ApiError(400, f"model {model!r} is served by an upstream server; tools are not passed on to it",
                       param="tools")  # fmt: skip
    names = [t["function"]["name"] for t in tools]
    if named is not None and named not in names:
        raise ApiError(400, f"tool_choice names the function {named!r}, which is not among the tools "
                       f"({', '.join(names)})", param="tool_choice")  # fmt: skip
    try:
        fmt = b.tool_format()
    except SlmError as e:
        raise ApiError(400, f"model {model!r} cannot take tools: {e}; serve it with a chat_template that "
                       f"renders tools ({EXAMPLE_TEMPLATE} fits ChatML models such as SmolLM2)", param="tools",
                       code="tools_unsupported") from None  # fmt: skip
    if mode == "none":
        return Plan(answer, tools)
    key = json.dumps([tools, mode, named, answer.kind if answer else None, answer.text if answer else None])
    try:
        constraint = _tool_constraint(fmt, key)
    except SlmError as e:
        raise ApiError(400, str(e), param="tools") from None
    return Plan(constraint, tools, fmt)


@functools.lru_cache(maxsize=256)
def _tool_constraint(fmt, key: str) -> Constraint | None:
    from slmforge.infer.constrain import Constraint
    from slmforge.infer.tool_use import call_constraint

    tools, mode, named, kind, text = json.loads(key)
    answer = Constraint(kind, text) if kind else None
    return call_constraint(fmt, tools, mode, named, answer)


def chat_messages(body, texts: list[str]) -> list[dict]:
    """The request's messages as the chat template takes them (contents as the guard let them through,
    developer as system, call arguments as objects); 400 for a tool conversation that does not hold
    together (a call to no tool of the request, arguments that are not JSON, a tool message answering no
    call)."""
    messages = []
    for m, t in zip(body.messages, texts):
        out = {"role": "system" if m.role == "developer" else m.role, "content": t}
        if m.tool_calls:
            out["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            out["tool_call_id"] = m.tool_call_id
        messages.append(out)
    if not any("tool_calls" in m or m["role"] == "tool" for m in messages):
        return messages
    if body.tools:
        reason = tool_calls.check_tool_messages(messages, body.tools)
    else:  # no tools to check the calls against: each tool message must still answer an earlier call
        made = {c.get("id") for m in messages for c in m.get("tool_calls") or [] if isinstance(c, dict)}
        reason = next((f"message {i} (tool) answers no earlier tool call (tool_call_id "
                       f"{m.get('tool_call_id')!r})" for i, m in enumerate(messages, 1)
                       if m["role"] == "tool" and m.get("tool_call_id") not in made - {None}), None)  # fmt: skip
    if reason:
        raise ApiError(400, f"messages: {reason}", param="messages")
    try:
        return tool_calls.template_messages(messages)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ApiError(400, f"messages: a tool call is malformed ({type(e).__name__}: {e})"[:300],
                       param="messages") from None  # fmt: skip
