"""Tool-calling chat rows (OpenAI's shape): validation, the form chat templates expect, and a probe that
tells whether a chat template renders tools at all.

A row's `tools` is OpenAI's function list, `[{"type": "function", "function": {"name", "description",
"parameters": JSON Schema}}]`; an assistant message may carry `tool_calls`, `[{"id", "type": "function",
"function": {"name", "arguments": JSON text or object}}]`, with `content` null, empty or a string; a
`tool` message answers one call by its `tool_call_id`. Every call must name a tool of the row, its
arguments must parse to a JSON object that the tool's `parameters` schema accepts (jsonschema, the
schema's own draft, 2020-12 by default), and every tool message must answer a call made before it.

Chat templates (Qwen2.5's, Llama 3.1's, Hermes-style ones) take `tools=` and render `arguments` with
`tojson`, so they expect an object, not JSON text: `template_messages` parses it. A template that ignores
`tools` or `tool_calls` renders without an error and silently drops them, so `template_gap` renders a
probe conversation and checks that the probe tool's schema, its call and its result all appear.
"""

from __future__ import annotations

import json
from functools import lru_cache

PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_lookup_7q",
        "description": "Probe tool 7q.",
        "parameters": {
            "type": "object",
            "properties": {"probe_key_7q": {"type": "string"}},
            "required": ["probe_key_7q"],
        },
    },
}
PROBE_CALL = {
    "id": "call_probe_7q",
    "type": "function",
    "function": {"name": "probe_lookup_7q", "arguments": {"probe_key_7q": "probe_value_7q"}},
}
PROBE_RESULT = "probe_result_7q"


# ---------------------------------------------------------------- validation


def check_tools(tools) -> str | None:
    """Why a row's `tools` list is malformed, or None."""
    if not isinstance(tools, list) or not tools:
        return '"tools" is not a non-empty list'
    names = set()
    for i, tool in enumerate(tools, 1):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            return f'tool {i} needs "type": "function" and a "function" object'
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            return f'tool {i} needs a "function" object with a "name"'
        name = fn["name"]
        if name in names:
            return f'tool {i} repeats the name "{name}"'
        names.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            return f'tool "{name}": "description" is not a string'
        if "parameters" in fn:
            reason = _schema_problem(fn["parameters"])
            if reason:
                return f'tool "{name}": "parameters" {reason}'
    return None


def check_tool_messages(messages: list[dict], tools: list | None) -> str | None:
    """Why the tool calls and tool results of a conversation are inconsistent, or None.

    Expects `messages` whose roles and plain contents were already checked and `tools` that passed
    `check_tools` (or None when the row has none)."""
    by_name = {t["function"]["name"]: t["function"] for t in tools or []}
    made: set[str] = set()
    answered: set[str] = set()
    for i, m in enumerate(messages, 1):
        calls = m.get("tool_calls") or None  # null and [] are how API dumps say "no calls"
        if calls is not None and m["role"] != "assistant":
            return f'message {i}: only assistant messages carry "tool_calls"'
        if calls is not None and not isinstance(calls, list):
            return f'message {i}: "tool_calls" is not a list'
        if calls:
            for k, call in enumerate(calls, 1):
                reason = _call_problem(call, by_name, tools is not None, made)
                if reason:
                    return f"message {i} tool call {k}: {reason}"
                made.add(call["id"])
        elif m["role"] == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                return f'message {i} (tool) has no "tool_call_id"'
            if call_id not in made:
                return f'message {i} (tool) answers call id "{call_id}", which no earlier tool call made'
            if call_id in answered:
                return f'message {i} (tool) answers call id "{call_id}" a second time'
            answered.add(call_id)
    return None


def check_arguments(function: dict, arguments) -> tuple[dict | None, str | None]:
    """(the arguments as an object, None), or (None, why `function`'s schema or JSON rejects them).

    `arguments` is JSON text (OpenAI's wire form) or an already parsed object."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            return None, f'"arguments" is not valid JSON ({e.msg})'
    if not isinstance(arguments, dict):
        return None, '"arguments" is not a JSON object'
    schema = function.get("parameters")
    if schema is not None:
        error = _best_error(json.dumps(schema, sort_keys=True), arguments)
        if error:
            return None, f"{function['name']} rejects these arguments: {error}"
    return arguments, None


def _call_problem(call, by_name: dict, has_tools: bool, made: set[str]) -> str | None:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return 'needs a "function" object with "name" and "arguments"'
    if call.get("type", "function") != "function":
        return f'"type" is {call.get("type")!r}, not "function"'
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        return 'has no "id" (a tool message answers a call by its id)'
    if call_id in made:
        return f'repeats the call id "{call_id}"'
    name = call["function"].get("name")
    if not isinstance(name, str):
        return 'needs a "function" object with "name" and "arguments"'
    if not has_tools:
        return f'calls "{name}" but the row has no "tools" list'
    if name not in by_name:
        return f'calls "{name}", which is not in "tools" ({", ".join(sorted(by_name))})'
    if "arguments" not in call["function"]:
        return f'"{name}" has no "arguments"'
    return check_arguments(by_name[name], call["function"]["arguments"])[1]


def _schema_problem(schema) -> str | None:
    from jsonschema import SchemaError, validators

    if not isinstance(schema, dict):
        return "is not a JSON Schema object"
    if schema.get("type", "object") != "object":
        return f'must describe an object (its "type" is {schema["type"]!r})'
    if not isinstance(schema.get("$schema", ""), str):
        return 'is not a valid JSON Schema ("$schema" is not a URI string)'
    try:
        validators.validator_for(schema, default=validators.Draft202012Validator).check_schema(schema)
    except SchemaError as e:
        return f"is not a valid JSON Schema ({_one_line(e.message)})"
    return None


@lru_cache(maxsize=256)
def _validator(schema_json: str):
    from jsonschema import validators

    schema = json.loads(schema_json)
    return validators.validator_for(schema, default=validators.Draft202012Validator)(schema)


def _best_error(schema_json: str, instance) -> str | None:
    from jsonschema.exceptions import best_match

    error = best_match(_validator(schema_json).iter_errors(instance))
    if error is None:
        return None
    where = f" at {error.json_path}" if error.path else ""
    return _one_line(error.message) + where


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- templates


def template_messages(messages: list[dict]) -> list[dict]:
    """The conversation as chat templates expect it: call arguments as objects, a call's missing or null
    content as "" (templates concatenate content), no empty "tool_calls", everything else unchanged."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            m = {**m, "content": m.get("content") or ""}
            m["tool_calls"] = [_call_for_template(c) for c in m["tool_calls"]]
        elif "tool_calls" in m:  # null or [] (an API dump's "no calls"): templates test it as defined
            m = {k: v for k, v in m.items() if k != "tool_calls"}
        out.append(m)
    return out


def _call_for_template(call: dict) -> dict:
    fn = call["function"]
    args = fn.get("arguments", {})
    if isinstance(args, str):
        args = json.loads(args)
    return {**call, "type": "function", "function": {**fn, "arguments": args}}


def template_gap(render) -> str | None:
    """What a chat template fails to render of a tool conversation, or None if it renders all of it.

    `render(messages, tools, add_generation_prompt)` returns the template's text or raises with the
    template's error. The probe tool's name and parameter must appear in the prompt, the call's name and
    argument in the assistant turn that would be trained on, and the tool result in the conversation."""
    user = {"role": "user", "content": "Look up the probe."}
    call = {"role": "assistant", "content": "", "tool_calls": [PROBE_CALL]}
    result = {"role": "tool", "tool_call_id": PROBE_CALL["id"], "content": PROBE_RESULT}
    reply = {"role": "assistant", "content": "Done."}
    tools = [PROBE_TOOL]
    fn, args = PROBE_TOOL["function"], PROBE_CALL["function"]["arguments"]
    try:
        prompt = render([user], tools, True)
        turn = render([user, call], tools, False)
        whole = render([user, call, result, reply], tools, False)
    except Exception as e:  # jinja errors: the template cannot take this conversation
        return f"fails on a tool conversation ({_one_line(str(e) or type(e).__name__)})"
    if fn["name"] not in prompt or "probe_key_7q" not in prompt:
        return 'ignores "tools" (a probe tool\'s schema does not appear in the prompt)'
    called = turn[len(prompt) :] if turn.startswith(prompt) else turn
    if fn["name"] not in called or args["probe_key_7q"] not in called:
        return 'ignores "tool_calls" (a probe call does not appear in the assistant turn)'
    if PROBE_RESULT not in whole:
        return "drops tool results (a probe tool message does not appear)"
    return None
