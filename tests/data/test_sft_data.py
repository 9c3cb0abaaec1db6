"""SFT data: loss masks on assistant tokens + end of turn, packing that keeps them, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmforge.core.errors import SlmError
from slmforge.data.sft_data import (
    IGNORE,
    Example,
    collate,
    encode_row,
    load_sft,
    pack,
    parse_row,
    stop_token_ids,
    turn_end_ids,
)
from slmforge.data.tokenizer import CHAT_TEMPLATE as CHATML


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _trained(tok, ids, labels) -> list[str]:
    """The labelled stretches, decoded one contiguous run at a time."""
    runs, current = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE:
            assert lab == i
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r) for r in runs]


CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "the cat sees the red house."},
        {"role": "assistant", "content": "sees"},
        {"role": "user", "content": "a small dog likes the blue sky."},
        {"role": "assistant", "content": "likes the sky"},
    ]
}


def test_chat_mask_covers_exactly_the_assistant_turns_and_their_end_of_turn(tok):
    ids, labels = encode_row(tok, CHAT, 1, True, stop_token_ids(tok))
    assert tok.decode(ids) == tok.apply_chat_template(CHAT["messages"], tokenize=False)
    assert _trained(tok, ids, labels) == ["sees<|im_end|>", "likes the sky<|im_end|>"]
    # everything the prompt side says (system, user turns, the "assistant\n" header) is masked
    masked = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab == IGNORE])
    assert "Be brief." in masked and "the blue sky" in masked and masked.count("<|im_start|>assistant\n") == 2
    assert turn_end_ids([Example(ids, labels)], tok) == {tok.convert_tokens_to_ids("<|im_end|>")}


def test_prompt_completion_becomes_a_chat_when_the_tokenizer_has_a_template(tok):
    row = {"prompt": "the cat sees the red house.", "completion": "sees"}
    ids, labels = encode_row(tok, row, 1, True, stop_token_ids(tok))
    assert tok.decode(ids).startswith("<|im_start|>user\nthe cat sees")
    assert _trained(tok, ids, labels) == ["sees<|im_end|>"]


def test_prompt_completion_without_a_template_is_plain_text_plus_eos(tok):
    row = {"prompt": "Q: the cat sees the red house.\nA:", "completion": " sees"}
    ids, labels = encode_row(tok, row, 1, False, stop_token_ids(tok))
    assert tok.decode(ids) == "Q: the cat sees the red house.\nA: sees<|endoftext|>"
    assert _trained(tok, ids, labels) == [" sees<|endoftext|>"]


def test_packing_keeps_every_label_with_its_token(tok, tmp_path):
    rows = [
        {"prompt": f"{s} sees the red house.", "completion": s} for s in ("the cat", "a dog", "my friend")
    ] * 7
    path = _write(tmp_path / "d.jsonl", rows)
    examples, _ = load_sft(path, tok, 64)
    windows = pack(examples, 64, seed=3)
    assert all(len(w.input_ids) <= 64 for w in windows) and len(windows) < len(examples)
    by_line = {e.lines[0]: e for e in examples}
    for w in windows:  # each window is its examples, whole and in order, labels included
        assert w.input_ids == sum((by_line[n].input_ids for n in w.lines), [])
        assert w.labels == sum((by_line[n].labels for n in w.lines), [])
    assert sorted(n for w in windows for n in w.lines) == sorted(by_line)
    assert sum(w.target_tokens for w in windows) == sum(e.target_tokens for e in examples)
    batch = collate(windows[-2:], pad_id=0)
    short = min(len(w.input_ids) for w in windows[-2:])
    for row in range(2):
        n = len(windows[-2 + row].input_ids)
        assert batch["attention_mask"][row].sum() == n
        assert (batch["labels"][row, n:] == IGNORE).all()
    assert short <= batch["input_ids"].shape[1]


def test_malformed_lines_stop_with_the_first_line_and_the_count(tok, tmp_path):
    path = _write(
        tmp_path / "d.jsonl",
        [{"prompt": "a", "completion": "b"}, "{not json", "", {"prompt": "c", "completion": "d"}, "[1, 2]"],
    )
    with pytest.raises(
        SlmError, match=r"2 bad line\(s\), first at line 2: not valid JSON.*--on-bad-line skip"
    ):
        load_sft(path, tok, 64)
    examples, stats = load_sft(path, tok, 64, on_bad_line="skip")
    assert len(examples) == 2 and [line for line, _ in stats.skipped] == [2, 5]
    assert "skipped 2 bad line(s) (first: line 2)" in stats.summary(path)


def test_a_conversation_without_an_assistant_turn_is_an_error_or_skipped(tok, tmp_path):
    lonely = {"messages": [{"role": "user", "content": "hello"}]}
    path = _write(tmp_path / "d.jsonl", [CHAT, lonely])
    with pytest.raises(SlmError, match="line 2: conversation has no assistant turn"):
        load_sft(path, tok, 128)
    examples, stats = load_sft(path, tok, 128, on_bad_line="skip")
    assert len(examples) == 1 and stats.skipped == [(2, "conversation has no assistant turn")]


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "needs a role"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "starts with the assistant"),
        ({"prompt": "x"}, 'both "prompt" and "completion"'),
        ({"prompt": "x", "completion": 3}, '"completion" is not a string'),
        ({"prompt": "x", "completion": "  "}, 'empty "completion"'),
        ({"text": "x"}, 'neither "messages"'),
    ],
)
def test_each_malformed_row_has_a_reason(row, reason):
    assert reason in parse_row(json.dumps(row))[1]


def test_chat_data_with_a_tokenizer_without_template_says_how_to_fix_it(tok, tmp_path):
    import copy

    plain = copy.deepcopy(tok)
    plain.chat_template = None
    path = _write(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, CHAT])
    with pytest.raises(SlmError, match="line 2 holds chat messages.*no chat template.*--chat-template FILE"):
        load_sft(path, plain, 128)


def test_long_sequences_are_truncated_with_a_count_or_refused(tok, tmp_path):
    long = {"prompt": "the cat sees the red house. " * 30, "completion": "sees"}
    path = _write(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, long])
    with pytest.raises(SlmError, match="line 2 is \\d+ tokens, longer than the 64-token context"):
        load_sft(path, tok, 64, on_long="error")
    examples, stats = load_sft(path, tok, 64)
    # the long row's reply was cut away entirely: counted as truncated, then dropped
    assert (stats.truncated, stats.dropped_long, len(examples)) == (1, 1, 1)
    long_reply = {"prompt": "a", "completion": "the cat sees the red house. " * 30}
    path = _write(tmp_path / "e.jsonl", [long_reply])
    examples, stats = load_sft(path, tok, 64)
    assert stats.truncated == 1 and len(examples[0].input_ids) == 64


def test_empty_or_missing_file_and_bad_flags(tok, tmp_path):
    with pytest.raises(SlmError, match="does not exist"):
        load_sft(tmp_path / "nope.jsonl", tok, 64)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SlmError, match="is empty"):
        load_sft(tmp_path / "empty.jsonl", tok, 64)
    with pytest.raises(SlmError, match="--on-bad-line"):
        load_sft(tmp_path / "empty.jsonl", tok, 64, on_bad_line="ignore")


# ---------------------------------------------------------------- tool-calling rows

TOOLS_TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "tools" / "chatml-tools.jinja"
BANK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_balance",
            "description": "Balance of one account.",
            "parameters": {
                "type": "object",
                "properties": {"account": {"type": "string", "enum": ["checking", "savings"]}},
                "required": ["account"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "block_card",
            "description": "Block a card.",
            "parameters": {
                "type": "object",
                "properties": {"card_last4": {"type": "string"}, "urgent": {"type": "boolean"}},
                "required": ["card_last4"],
            },
        },
    },
]


def _call(name="get_balance", arguments='{"account": "checking"}', call_id="call_1") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_row(*, calls=None, answer_id="call_1", tools=BANK_TOOLS) -> dict:
    row = {
        "messages": [
            {"role": "user", "content": "the cat sees my balance?"},
            {"role": "assistant", "content": None, "tool_calls": calls or [_call()]},
            {"role": "tool", "tool_call_id": answer_id, "content": '{"balance": 12.5}'},
            {"role": "assistant", "content": "the cat sees 12.5"},
        ]
    }
    return row if tools is None else {"tools": tools, **row}


@pytest.fixture(scope="module")
def tools_tok(tok):
    import copy

    with_tools = copy.deepcopy(tok)
    with_tools.chat_template = TOOLS_TEMPLATE.read_text(encoding="utf-8")
    return with_tools


def test_tool_rows_render_the_schema_and_train_on_the_call_but_not_the_result(tools_tok):
    from slmforge.data.tool_calls import template_messages

    row = _tool_row()
    ids, labels = encode_row(tools_tok, row, 1, True, stop_token_ids(tools_tok))
    text = tools_tok.decode(ids)
    assert text == tools_tok.apply_chat_template(
        template_messages(row["messages"]), tools=BANK_TOOLS, tokenize=False
    )
    assert (
        '"name": "get_balance", "description": "Balance of one account."' in text
    )  # the schema, in the prompt
    assert _trained(tools_tok, ids, labels) == [
        '<tool_call>\n{"name": "get_balance", "arguments": {"account": "checking"}}\n</tool_call><|im_end|>',
        "the cat sees 12.5<|im_end|>",
    ]
    masked = tools_tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab == IGNORE])
    assert '<tool_response>\n{"balance": 12.5}\n</tool_response>' in masked and "block_card" in masked


def test_arguments_as_json_text_or_as_an_object_render_the_same(tools_tok):
    stops = stop_token_ids(tools_tok)
    as_text = encode_row(tools_tok, _tool_row(), 1, True, stops)
    as_object = encode_row(
        tools_tok, _tool_row(calls=[_call(arguments={"account": "checking"})]), 1, True, stops
    )
    assert as_text == as_object


def test_the_bank_example_file_loads_and_trains_on_every_call(tools_tok):
    path = TOOLS_TEMPLATE.parent / "train.jsonl"
    examples, stats = load_sft(path, tools_tok, 8192, on_long="error")
    # and without tools the template is plain ChatML, as the tokenizer's own
    assert tools_tok.apply_chat_template(CHAT["messages"], tokenize=False) == tools_tok.apply_chat_template(
        CHAT["messages"], tokenize=False, chat_template=CHATML
    )
    assert stats.examples == 20 and not stats.skipped
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row, ex in zip(rows, examples, strict=True):
        trained = "".join(_trained(tools_tok, ex.input_ids, ex.labels))
        names = [c["function"]["name"] for m in row["messages"] for c in m.get("tool_calls", [])]
        assert trained.count("<tool_call>") == len(names) and all(f'"{n}"' in trained for n in names)
        assert "<tool_response>" not in trained


@pytest.mark.parametrize(
    "template, gap",
    [
        (None, 'ignores "tools"'),  # the tiny tokenizer's own ChatML, like SmolLM2's
        (
            "{% for t in tools or [] %}{{ t | tojson }}{% endfor %}{% for m in messages %}"
            "{{ m.role + (m.content or '') + '|' }}{% endfor %}",
            'ignores "tool_calls"',
        ),
        ("{{ raise_exception('no tools here') }}", "fails on a tool conversation (no tools here)"),
    ],
)
def test_a_template_that_cannot_render_tools_is_refused_naming_the_model(tok, tmp_path, template, gap):
    import copy

    refusing = copy.deepcopy(tok)
    refusing.chat_template = template or tok.chat_template
    path = _write(tmp_path / "d.jsonl", [CHAT, _tool_row()])
    with pytest.raises(
        SlmError, match=r"line 2 has tools, but the chat template of tiny-7 .*--chat-template"
    ):
        load_sft(path, refusing, 512, model="tiny-7")
    with pytest.raises(SlmError) as err:
        load_sft(path, refusing, 512, model="tiny-7")
    assert gap in str(err.value) and "\n" not in str(err.value)


def _installed(name: str) -> Path:
    path = Path.home() / ".slmforge" / "models" / name
    if not (path / "tokenizer.json").exists():
        pytest.skip(f"{name} is not installed offline")
    return path


def test_qwen_renders_tool_rows_and_smollm2_is_refused(tmp_path):
    from transformers import AutoTokenizer

    qwen = AutoTokenizer.from_pretrained(_installed("qwen2.5-coder-0.5b-instruct"))
    smol = AutoTokenizer.from_pretrained(_installed("smollm2-135m-instruct"))
    path = _write(tmp_path / "d.jsonl", [_tool_row()])
    (ex,), _ = load_sft(path, qwen, 1024)
    assert '"required": ["account"]' in qwen.decode(ex.input_ids)
    assert _trained(qwen, ex.input_ids, ex.labels) == [
        '<tool_call>\n{"name": "get_balance", "arguments": {"account": "checking"}}\n</tool_call><|im_end|>',
        "the cat sees 12.5<|im_end|>",
    ]
    with pytest.raises(SlmError, match='chat template of smollm2-135m-instruct ignores "tools"'):
        load_sft(path, smol, 1024, model="smollm2-135m-instruct")


_NO_ID = {"type": "function", "function": {"name": "get_balance", "arguments": "{}"}}


@pytest.mark.parametrize(
    "row, reason",
    [
        (_tool_row(calls=[_call("transfer", "{}")]), 'calls "transfer", which is not in "tools"'),
        (_tool_row(calls=[_call(arguments='{"account": ')]), '"arguments" is not valid JSON'),
        (_tool_row(calls=[_call(arguments="[1]")]), '"arguments" is not a JSON object'),
        (
            _tool_row(calls=[_call(arguments="{}")]),
            "get_balance rejects these arguments: 'account' is a required",
        ),
        (
            _tool_row(calls=[_call(arguments='{"account": "gold"}')]),
            "'gold' is not one of ['checking', 'savings']",
        ),
        (_tool_row(calls=[_call(arguments='{"account": "savings", "pin": 1}')]), "('pin' was unexpected)"),
        (
            _tool_row(calls=[_call("block_card", '{"card_last4": 4417}')]),
            "block_card rejects these arguments: 4417 is not of type 'string' at $.card_last4",
        ),
        (_tool_row(answer_id="call_9"), 'message 3 (tool) answers call id "call_9", which no earlier'),
        (_tool_row(calls=[_NO_ID]), 'message 2 tool call 1: has no "id"'),
        (_tool_row(tools=None), 'calls "get_balance" but the row has no "tools" list'),
        ({"tools": [], "messages": CHAT["messages"]}, '"tools" is not a non-empty list'),
        ({"tools": [{"type": "function"}], "messages": CHAT["messages"]}, 'tool 1 needs a "function"'),
        ({"tools": BANK_TOOLS + BANK_TOOLS[:1], "messages": CHAT["messages"]}, "tool 3 repeats the name"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"type": "strng"}}},
                        },
                    }
                ],
                "messages": CHAT["messages"],
            },  # fmt: skip
            'tool "f": "parameters" is not a valid JSON Schema',
        ),
        ({"tools": BANK_TOOLS, "prompt": "a", "completion": "b"}, '"tools" needs a "messages" row'),
    ],
)
def test_each_bad_tool_row_has_a_one_line_reason(row, reason):
    got = parse_row(json.dumps(row))[1]
    assert got and reason in got and "\n" not in got, got


def test_tool_messages_must_answer_a_call_once_and_after_it():
    row = _tool_row()
    row["messages"].insert(3, {"role": "tool", "tool_call_id": "call_1", "content": "again"})
    assert 'answers call id "call_1" a second time' in parse_row(json.dumps(row))[1]
    row = _tool_row()
    del row["messages"][2]["tool_call_id"]
    assert 'message 3 (tool) has no "tool_call_id"' in parse_row(json.dumps(row))[1]
    early = {"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c", "content": "y"},
                          {"role": "assistant", "content": "z"}]}  # fmt: skip
    assert "which no earlier tool call made" in parse_row(json.dumps(early))[1]
    assert parse_row(json.dumps(_tool_row()))[1] is None


def test_a_bad_tool_row_stops_loading_at_its_line(tools_tok, tmp_path):
    path = _write(tmp_path / "d.jsonl", [_tool_row(), _tool_row(calls=[_call("transfer", "{}")])])
    with pytest.raises(
        SlmError, match=r'1 bad line\(s\), first at line 2: message 2 tool call 1: calls "transfer"'
    ):
        load_sft(path, tools_tok, 4096)
    examples, stats = load_sft(path, tools_tok, 4096, on_bad_line="skip")
    assert len(examples) == 1 and stats.skipped[0][0] == 2


def test_null_or_empty_tool_calls_mean_no_calls_as_in_api_dumps(tools_tok):
    row = {
        "tools": BANK_TOOLS,
        "messages": [*CHAT["messages"][:2], {**CHAT["messages"][2], "tool_calls": None}],
    }
    row["messages"].append({"role": "user", "content": "and?"})
    row["messages"].append({"role": "assistant", "content": "likes", "tool_calls": []})
    assert parse_row(json.dumps(row))[1] is None
    ids, labels = encode_row(tools_tok, row, 1, True, stop_token_ids(tools_tok))
    assert _trained(tools_tok, ids, labels) == ["sees<|im_end|>", "likes<|im_end|>"]
    bad = {**row, "messages": [{**row["messages"][0], "tool_calls": [_call()]}, *row["messages"][1:]]}
    assert 'message 1: only assistant messages carry "tool_calls"' in parse_row(json.dumps(bad))[1]
