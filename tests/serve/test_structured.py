"""Structured replies through the official openai client: `response_format` (json_schema, json_object)
on chat and text completions, `tools` + `tool_choice` (required, a named function, none, auto) in
OpenAI's shape, whole and streamed; and the 400s for bad input. The model is the conftest's tiny random
Llama: what it would say is noise, so every valid reply here is the constraint's doing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from slmforge.serve.backends import ChatBackend
from slmforge.serve.config import ModelConfig
from tests.serve.conftest import LiveServer

openai = pytest.importorskip("openai")

TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "tools" / "chatml-tools.jinja"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
           "days": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["city", "days"],
           "additionalProperties": False}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The forecast for a city.",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "block_card", "description": "Block a card.",
                                      "parameters": {"type": "object", "properties": {
                                          "last4": {"type": "string", "pattern": "^[0-9]{4}$"}},
                                          "required": ["last4"], "additionalProperties": False}}},
]  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Paris this week?"}]


@pytest.fixture(scope="module")
def tools_backend(tiny_model_dir, tmp_path_factory):
    """The tiny model served with the ChatML-with-tools template (its own ChatML has no tools), reading
    4,096 positions (its 512-token vocabulary spells the tools' schemas out in ~800 tokens; RoPE has no
    learnt positions, so only the config changes)."""
    model = tmp_path_factory.mktemp("tiny_tools") / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    return ChatBackend(
        ModelConfig("tiny-tools", "chat", str(model), max_new_tokens=64, chat_template=str(TEMPLATE)),
        threads=1,
    )


@pytest.fixture
def api(make_app, new_key, tools_backend):
    """An openai client on a live server with `tiny` (no tool support) and `tiny-tools`."""
    with LiveServer(make_app(extra_backends={"tiny-tools": tools_backend})) as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key=new_key("*"), max_retries=0)


def _valid(schema: dict, text: str):
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


def _streamed(chunks) -> tuple[str, dict[int, dict], str | None, list]:
    """(content, {index: {"id", "name", "arguments"}}, finish_reason, extra fields) of a chat stream."""
    text, calls, finish, extras = "", {}, None, []
    for c in chunks:
        if not c.choices:
            continue
        d = c.choices[0].delta
        text += d.content or ""
        for tc in d.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = tc.id or call["id"]
            if tc.function is not None:
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
        extras.append(d.model_extra or {})
        finish = c.choices[0].finish_reason or finish
    return text, calls, finish, extras


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER, "strict": True}}


def test_response_format_json_schema_chat_and_completions(api):
    r = api.chat.completions.create(model="tiny", messages=ASK, max_tokens=60, response_format=SCHEMA_FORMAT)
    assert r.choices[0].finish_reason == "stop"
    whole = r.choices[0].message.content
    _valid(WEATHER, whole)
    stream = api.chat.completions.create(model="tiny", messages=ASK, max_tokens=60, response_format=SCHEMA_FORMAT,
                                         stream=True)  # fmt: skip
    text, calls, finish, _ = _streamed(stream)
    assert (text, calls, finish) == (whole, {}, "stop")  # greedy: streamed == whole

    loose = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": WEATHER},
    }  # strict off: enforced too
    c = api.completions.create(
        model="tiny", prompt="Weather:", max_tokens=60, extra_body={"response_format": loose}
    )
    assert c.choices[0].finish_reason == "stop"
    _valid(WEATHER, c.choices[0].text)
    pieces = [x.choices[0].text for x in api.completions.create(
        model="tiny", prompt="Weather:", max_tokens=60, extra_body={"response_format": loose}, stream=True)
        if x.choices]  # fmt: skip
    assert "".join(pieces) == c.choices[0].text


def test_response_format_json_object_and_text(api):
    r = api.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=40, response_format={"type": "json_object"}
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    text, _, finish, _ = _streamed(api.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=40, response_format={"type": "json_object"}, stream=True))  # fmt: skip
    assert (text, finish) == (r.choices[0].message.content, "stop")
    plain = api.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=6, response_format={"type": "text"}
    )
    free = api.chat.completions.create(model="tiny", messages=ASK, max_tokens=6)
    assert plain.choices[0].message.content == free.choices[0].message.content


def _check_call(call_name: str, arguments: str) -> dict:
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call_name)
    return _valid(schema, arguments)


def test_tool_choice_required_whole_and_streamed(api):
    r = api.chat.completions.create(model="tiny-tools", messages=ASK, max_tokens=200, tools=TOOLS,
                                    tool_choice="required")  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    _check_call(call.function.name, call.function.arguments)

    text, calls, finish, _ = _streamed(api.chat.completions.create(
        model="tiny-tools", messages=ASK, max_tokens=200, tools=TOOLS, tool_choice="required", stream=True))  # fmt: skip
    assert text == "" and finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert (calls[0]["name"], calls[0]["arguments"]) == (call.function.name, call.function.arguments)

    # the conversation goes on: the call and its result back in, the reply is text
    follow = ASK + [choice.message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sun"}'}]  # fmt: skip
    r2 = api.chat.completions.create(
        model="tiny-tools", messages=follow, max_tokens=5, tools=TOOLS, tool_choice="none"
    )
    assert r2.choices[0].message.tool_calls is None and isinstance(r2.choices[0].message.content, str)


def test_named_tool_choice(api):
    named = {"type": "function", "function": {"name": "block_card"}}
    r = api.chat.completions.create(
        model="tiny-tools", messages=ASK, max_tokens=200, tools=TOOLS, tool_choice=named
    )
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "block_card" and r.choices[0].finish_reason == "tool_calls"
    assert len(_check_call("block_card", call.function.arguments)["last4"]) == 4
    _, calls, finish, _ = _streamed(api.chat.completions.create(
        model="tiny-tools", messages=ASK, max_tokens=200, tools=TOOLS, tool_choice=named, stream=True))  # fmt: skip
    assert finish == "tool_calls" and calls[0]["name"] == "block_card"
    assert calls[0]["arguments"] == call.function.arguments


def test_tool_choice_none_and_auto_answer_in_text(api):
    for choice in ("none", "auto"):
        r = api.chat.completions.create(model="tiny-tools", messages=ASK, max_tokens=8, tools=TOOLS,
                                        tool_choice=choice)  # fmt: skip
        m = r.choices[0].message
        assert m.tool_calls is None and m.content and r.choices[0].finish_reason in ("stop", "length")
        text, calls, finish, _ = _streamed(api.chat.completions.create(
            model="tiny-tools", messages=ASK, max_tokens=8, tools=TOOLS, tool_choice=choice, stream=True))  # fmt: skip
        assert (text, calls, finish) == (m.content, {}, r.choices[0].finish_reason)


def test_auto_with_response_format_is_a_call_or_the_json(api):
    r = api.chat.completions.create(model="tiny-tools", messages=ASK, max_tokens=200, tools=TOOLS,
                                    response_format=SCHEMA_FORMAT)  # fmt: skip
    m = r.choices[0].message
    if m.tool_calls:
        assert r.choices[0].finish_reason == "tool_calls"
        _check_call(m.tool_calls[0].function.name, m.tool_calls[0].function.arguments)
    else:
        _valid(WEATHER, m.content)


def test_a_call_cut_short_is_reported_not_passed_on(api):
    r = api.chat.completions.create(model="tiny-tools", messages=ASK, max_tokens=12, tools=TOOLS,
                                    tool_choice="required")  # fmt: skip
    choice = choice_ = r.choices[0]
    assert choice.finish_reason == "length" and choice.message.tool_calls is None
    assert choice.message.content.startswith("<tool_call>")
    assert "tool call" in choice_.message.model_extra["tool_call_error"]
    text, calls, finish, extras = _streamed(api.chat.completions.create(
        model="tiny-tools", messages=ASK, max_tokens=12, tools=TOOLS, tool_choice="required", stream=True))  # fmt: skip
    assert (text, calls, finish) == (choice.message.content, {}, "length")
    assert any("tool_call_error" in e for e in extras)


@pytest.mark.parametrize(
    "model, extra, message",
    [
        ("tiny", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "required": "city"}}}}, "is not a valid JSON Schema"),
        ("tiny", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "dependentSchemas": {"a": {"required": ["b"]}}}}}},
         "keywords LLGuidance does not support: dependentSchemas"),
        ("tiny", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$schema": 5}}}},
         '"$schema" is not a URI string'),
        ("tiny-tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
          "$schema": [1]}}}]}, '"$schema" is not a URI string'),
        ("tiny", {"response_format": {"type": "xml"}}, "response_format type must be text, json_object or json_schema"),
        ("tiny", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema"),
        ("tiny", {"tools": TOOLS}, "model 'tiny' cannot take tools: its chat template ignores \"tools\""),
        ("tiny-tools", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "fly"}}},
         "tool_choice names the function 'fly', which is not among the tools (get_weather, block_card)"),
        ("tiny-tools", {"tool_choice": "required"}, "tool_choice is required, but the request has no tools"),
        ("tiny-tools", {"tools": [{"type": "function", "function": {"description": "no name"}}]},
         'tool 1 needs a "function" object with a "name"'),
        ("tiny-tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "string", "format": "nope-format", "dependentSchemas": {}}}}}}]},
         "dependentSchemas"),
        ("tiny-tools", {"tool_choice": "sometimes", "tools": TOOLS}, "tool_choice"),
        ("tiny-tools", {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
         "message 2 (tool) answers no earlier tool call"),
        ("tiny-tools", {"tools": TOOLS, "messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
         'answers call id "call_x", which no earlier tool call made'),
        ("tiny-tools", {"tools": TOOLS, "messages": [*ASK, {"role": "assistant", "tool_calls": [{"id": "c1",
          "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome", "days": 1}'}}]}]},
         "get_weather rejects these arguments: 'Rome' is not one of"),
    ],
)  # fmt: skip
def test_bad_input_is_a_one_line_400(api, model, extra, message):
    body = {"model": model, "messages": ASK, "max_tokens": 5, **extra}
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(**body)
    error = e.value.body
    assert e.value.status_code == 400 and message in error["message"] and "\n" not in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_chat_template_setting_is_checked():
    from slmforge.core.errors import SlmError
    from slmforge.serve.config import from_dict, validate

    with pytest.raises(SlmError, match="chat_template: no such file /no/such.jinja"):
        ChatBackend(ModelConfig("t", "chat", "/no/model", chat_template="/no/such.jinja"))
    with pytest.raises(SlmError, match="model 'x': only a local chat model takes a chat_template"):
        validate(
            from_dict(
                {"models": [{"name": "x", "kind": "classify", "path": "p", "chat_template": "t.jinja"}]}
            )
        )


def test_upstream_models_refuse_tools(make_app, new_key):
    from slmforge.serve.backends import UpstreamChatBackend

    up = UpstreamChatBackend(ModelConfig("far", "chat", upstream="http://127.0.0.1:9/v1"))
    with LiveServer(make_app(extra_backends={"far": up})) as srv:
        api = openai.OpenAI(base_url=srv.url + "/v1", api_key=new_key("*"), max_retries=0)
        with pytest.raises(openai.BadRequestError, match="served by an upstream server"):
            api.chat.completions.create(model="far", messages=ASK, tools=TOOLS)
