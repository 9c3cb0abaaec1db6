"""SFT data: loss masks on assistant tokens + end of turn, packing that keeps them, and every bad input."""

from __future__ import annotations

import json

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
