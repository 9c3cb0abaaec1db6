"""Generative entity extraction: the entity schema, the SFT converter, strings mapped back onto the text,
the reply check, and `GenerativeExtractor` end to end on the tiny random Llama (valid JSON every time)."""

from __future__ import annotations

import json

import pytest

from slmforge.core.errors import SlmError
from slmforge.data.entities import (
    Record,
    Span,
    entities_to_sft,
    entity_schema,
    extraction_messages,
    record_json,
    schema_labels,
    spans_from_strings,
)
from slmforge.ship.extraction import parse_reply

ROWS = [
    {"text": "Ana Silva met Bo Li in Paris and then Paris again.",
     "entities": [{"start": 0, "end": 9, "label": "PERSON"}, {"start": 14, "end": 19, "label": "PERSON"},
                  {"start": 23, "end": 28, "label": "LOCATION"}, {"start": 38, "end": 43, "label": "LOCATION"}]},
    {"text": "Nothing to see.", "entities": []},
]  # fmt: skip


def _write(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_schema_orders_labels_requires_all_and_bounds_the_reply():
    schema = entity_schema(["PERSON", "ORG", "PERSON"], max_items=3, max_length=20)
    assert list(schema["properties"]) == ["PERSON", "ORG"] and schema["required"] == ["PERSON", "ORG"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["ORG"] == {"type": "array", "items": {"type": "string", "minLength": 1,
                                           "maxLength": 20}, "maxItems": 3}  # fmt: skip
    assert schema_labels(schema) == ["PERSON", "ORG"]


@pytest.mark.parametrize(
    "labels, message", [([], "at least one label"), (["B-X"], "not a name"), (["O"], "not a name")]
)
def test_bad_schema_labels_are_one_line_errors(labels, message):
    with pytest.raises(SlmError, match=message) as e:
        entity_schema(labels)
    assert "\n" not in str(e.value)
    with pytest.raises(SlmError, match="has none"):
        schema_labels({"type": "object", "properties": {}})


def test_converter_writes_chat_rows_in_text_order_and_the_schema(tmp_path):
    data = _write(tmp_path, ROWS)
    s = entities_to_sft(data, str(tmp_path / "sft.jsonl"))
    assert s["rows"] == 2 and s["spans"] == 4 and s["labels"] == ["LOCATION", "PERSON"]
    rows = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    system, user, assistant = rows[0]["messages"]
    assert [system["role"], user["role"], assistant["role"]] == ["system", "user", "assistant"]
    assert [system, user] == extraction_messages(ROWS[0]["text"], ["LOCATION", "PERSON"])
    assert json.loads(assistant["content"]) == {
        "LOCATION": ["Paris", "Paris"],
        "PERSON": ["Ana Silva", "Bo Li"],
    }
    assert assistant["content"] == '{"LOCATION": ["Paris", "Paris"], "PERSON": ["Ana Silva", "Bo Li"]}'
    assert json.loads(rows[1]["messages"][2]["content"]) == {"LOCATION": [], "PERSON": []}
    schema = json.loads((tmp_path / "sft.schema.json").read_text())
    assert schema_labels(schema) == ["LOCATION", "PERSON"]
    # the rows are what `slm finetune` reads
    from slmforge.data.sft_data import read_rows

    good, problems = read_rows(tmp_path / "sft.jsonl")
    assert len(good) == 2 and not problems
    with pytest.raises(SlmError, match="unknown label 'PERSON'"):
        entities_to_sft(data, str(tmp_path / "x.jsonl"), labels=["LOCATION"])


def test_cli_entities_to_sft(slm_cli, tmp_path):
    data = _write(tmp_path, ROWS)
    code, _, err = slm_cli(
        "data", "entities-to-sft", data, "-o", tmp_path / "o.jsonl", "--labels", "PERSON,LOCATION"
    )
    assert code == 0, err
    assert schema_labels(json.loads((tmp_path / "o.schema.json").read_text())) == ["PERSON", "LOCATION"]


def test_strings_map_to_the_first_free_occurrence_left_to_right():
    text = "Paris and Paris, then Apple Watch by Apple."
    found = {"LOCATION": ["Paris", "Paris", "Paris", "Rome"], "PRODUCT": ["Apple Watch"], "ORG": ["Apple"]}
    spans, dropped = spans_from_strings(text, found, ["PRODUCT", "ORG", "LOCATION"])
    assert spans == [Span(0, 5, "LOCATION"), Span(10, 15, "LOCATION"), Span(22, 33, "PRODUCT"),
                     Span(37, 42, "ORG")]  # fmt: skip
    assert dropped == 2  # the third Paris (no free occurrence) and Rome (not in the text)
    assert record_json(Record(text, spans, 1), ["LOCATION", "PRODUCT", "ORG"]) == (
        '{"LOCATION": ["Paris", "Paris"], "PRODUCT": ["Apple Watch"], "ORG": ["Apple"]}'
    )


def test_reply_check_follows_the_schema():
    schema = entity_schema(["A", "B"], max_items=1, max_length=3)
    assert parse_reply('{"A": ["x"], "B": []}', schema) == {"A": ["x"], "B": []}
    for bad in ('{"A": ["x"]}', '{"A": [], "B": [], "C": []}', '{"A": ["xxxx"], "B": []}',
                '{"A": ["x", "y"], "B": []}', '{"A": [1], "B": []}', '{"A": [], "B": [', "[]"):  # fmt: skip
        assert parse_reply(bad, schema) is None, bad


def test_generative_extractor_end_to_end_is_always_valid_json(tiny_model_dir, tmp_path):
    from slmforge.ship.extraction import evaluate_extraction

    data = _write(tmp_path, ROWS * 2)
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(entity_schema(["LOCATION", "PERSON"], max_items=2, max_length=8)))
    row = evaluate_extraction(
        str(tiny_model_dir), data, schema=str(schema), backend="torch", latency_queries=2
    )
    assert row["json_validity"] == 1.0 and row["records"] == 4 and row["gold_spans"] == 8
    assert row["scored_labels"] == ["LOCATION", "PERSON"] and row["runtime"] == "torch"
    assert row["dropped_strings"] >= 0 and row["params"] > 0
    assert 0.0 <= row["micro_f1"] <= 1.0  # a random model: the number is whatever it is, the JSON is valid


def test_generative_bad_input_is_one_line(slm_cli, tiny_model_dir, tmp_path):
    none = _write(tmp_path, [{"text": "nothing here", "entities": []}])
    code, _, err = slm_cli("eval", str(tiny_model_dir), "--task", "extraction", "--data", none)
    assert code != 0 and "no entity spans" in err and "--schema" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    data = _write(tmp_path, ROWS)
    code, _, err = slm_cli(
        "eval", str(tiny_model_dir), "--task", "extraction", "--data", data, "--schema", bad
    )
    assert code != 0 and "not valid JSON" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"type": "object", "properties": {}}))
    code, _, err = slm_cli(
        "eval", str(tiny_model_dir), "--task", "extraction", "--data", data, "--schema", empty
    )
    assert code != 0 and "has none" in err and len(err.strip().splitlines()) == 1
