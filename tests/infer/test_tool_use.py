"""Tool calls in the chat template's own form: learnt from the template, forced by the constraint, read
back and checked (slmforge.infer.tool_use), with the conftest's tiny tokenizer under three templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmforge.core.errors import SlmError
from slmforge.infer import tool_use
from slmforge.infer.tool_use import CallHoldback, ToolFormat, read_calls

HERMES = (Path(__file__).resolve().parents[2] / "examples" / "tools" / "chatml-tools.jinja").read_text()
# Llama 3.1's way (shortened): the call is the bare object with "parameters", then the end of the turn
BARE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if tools and loop.first %}{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% endif %}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}"
    '{{ \'{"name": "\' + c.function.name + \'", "parameters": \' + (c.function.arguments | tojson) + "}" }}'
    "{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
    "required": ["city"], "additionalProperties": False}}}]  # fmt: skip
FMT = ToolFormat("<tool_call>\n", "\n</tool_call>")


@pytest.fixture
def tok(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_the_format_is_learnt_from_the_template(tok):
    tok.chat_template = HERMES
    assert tool_use.tool_format(tok) == FMT
    tok.chat_template = BARE
    assert tool_use.tool_format(tok) == ToolFormat("", "", "name", "parameters", True)


def test_a_template_without_tools_is_refused_by_what_it_lacks(tok):
    with pytest.raises(SlmError, match='its chat template ignores "tools"'):
        tool_use.tool_format(tok)  # the tiny tokenizer's plain ChatML
    tok.chat_template = None
    with pytest.raises(SlmError, match="it has no chat template"):
        tool_use.tool_format(tok)


def test_the_constraint_compiles_and_names_unsupported_keywords():
    for mode in ("required", "auto"):
        assert "%json" in tool_use.call_constraint(FMT, TOOLS, mode).text
    assert tool_use.call_constraint(ToolFormat("", ""), TOOLS, "auto") is None  # no trigger: read afterwards
    bad = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "dependentSchemas": {"a": {}}}}}]  # fmt: skip
    with pytest.raises(SlmError, match="the tools' parameters: .*dependentSchemas"):
        tool_use.call_constraint(FMT, bad, "required")
    with pytest.raises(SlmError, match="no tool is named 'fly'"):
        tool_use.call_constraint(FMT, TOOLS, "required", only="fly")


def _call(args: dict, name: str = "get_weather") -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"


def test_calls_are_read_and_checked():
    read = read_calls(FMT, "Let me look.\n" + _call({"city": "Oslo"}), TOOLS)
    assert read.error is None and read.content == "Let me look."
    (call,) = read.calls
    assert call["id"].startswith("call_") and call["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
    }
    assert read_calls(FMT, "Just text.", TOOLS).calls == []
    for text, why in [
        (_call({"city": "Rome"}), "get_weather rejects these arguments: 'Rome' is not one of"),
        (_call({"city": "Oslo"}, "fly"), "names 'fly', which is not among the request's tools"),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os', "not valid JSON"),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}', "does not end with '</tool_call>'"),
    ]:  # fmt: skip
        read = read_calls(FMT, text, TOOLS)
        assert read.calls == [] and read.content == text and why in read.error
    bare = ToolFormat("", "", "name", "parameters")
    assert read_calls(bare, '{"name": "get_weather", "parameters": {"city": "Paris"}}', TOOLS).calls
    assert read_calls(bare, '{"city": "Paris"}', TOOLS).calls == []  # JSON, but not a call


def test_streaming_holds_back_the_call_and_a_possible_start_of_it():
    held = CallHoldback(FMT)
    out = [held.push(p) for p in ["Sure", ", <to", "ol_call>\n{", '"name": "get_weather"}', "\n</tool_call>"]]
    assert out == ["Sure", ", ", "", "", ""]
    assert held.text.startswith("Sure, <tool_call>") and held.rest() == held.text[len("Sure, ") :]
    held = CallHoldback(FMT)
    assert [held.push(p) for p in ["a <t", "able>"]] == ["a ", "<table>"]  # not a call after all
    bare = CallHoldback(ToolFormat("", ""))
    assert [bare.push(p) for p in [" ", '{"na']] == ["", ""] and bare.holding
