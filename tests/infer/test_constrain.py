"""Constrained decoding on the tiny random Llama: every output obeys its constraint (JSON schema, any JSON
object, regex, choice, Lark), greedy and sampled, one by one and batched on ONNX Runtime, streamed; where the
constraint allows the unconstrained greedy reply it is left unchanged; and each bad constraint is one error."""

from __future__ import annotations

import json
import re

import pytest

from slmforge.core.errors import SlmError
from slmforge.infer import engines
from slmforge.infer.constrain import Constraint, Guide, compiled
from slmforge.infer.generate import GenerateConfig, complete, complete_batch, prompt_ids

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "kind": {"enum": ["cat", "dog"]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "kind", "ok"],
    "additionalProperties": False,
}
PROMPTS = ["The cat sees", "Every student reads", "A young girl paints"]


def _valid(text: str) -> dict:
    """`text` parsed, checked field by field against SCHEMA (fails the test otherwise)."""
    obj = json.loads(text)
    assert set(obj) == {"name", "age", "kind", "ok"}, text
    assert isinstance(obj["name"], str) and len(obj["name"]) <= 6, text
    assert type(obj["age"]) is int and 0 <= obj["age"] <= 120, text
    assert obj["kind"] in ("cat", "dog") and type(obj["ok"]) is bool, text
    return obj


@pytest.fixture(scope="module")
def torch_lm(tiny_model_dir):
    return engines.open_lm(str(tiny_model_dir), "torch")


@pytest.fixture(scope="module")
def ort_lm(tiny_model_dir, tmp_path_factory):
    return engines.open_lm(str(tiny_model_dir), "ort", "fp32", threads=1)


def _run(lm, prompt: str, constraint, **kw):
    cfg = GenerateConfig(model="tiny", threads=1, max_new_tokens=kw.pop("max_new_tokens", 160), **kw)
    ids = prompt_ids(lm.tokenizer, [{"role": "user", "content": prompt}], chat=False)
    return complete(lm.step(), lm.tokenizer, ids, cfg, lm.eos, None, constraint)


def test_json_schema_greedy_and_sampled_outputs_validate(torch_lm):
    c = Constraint.json_schema(SCHEMA)
    for prompt in PROMPTS:
        done = _run(torch_lm, prompt, c)
        _valid(done.text)
        assert done.stopped_at_eos and done.constraint_satisfied
    sampled = [_run(torch_lm, "The cat sees", c, temperature=1.0, seed=s) for s in range(4)]
    for done in sampled:
        _valid(done.text)
    assert len({d.text for d in sampled}) > 1  # sampling still samples, within the schema


def test_any_json_object(torch_lm):
    runs = [
        _run(torch_lm, "The old man", Constraint.json_object(), temperature=1.0, seed=s) for s in range(3)
    ]
    whole = [d for d in runs if d.constraint_satisfied]
    assert whole and all(isinstance(json.loads(d.text), dict) for d in whole)
    for done in runs:  # a random model's object may outgrow the token limit: then it is cut, and says so
        assert done.constraint_satisfied or (len(done.token_ids) == 160 and done.text.startswith("{"))


def test_regex_and_choice_outputs_match(torch_lm):
    pattern = r"[a-z]{2,5}-[0-9]{3}"
    for prompt in PROMPTS:
        for temperature in (0.0, 1.0):
            done = _run(torch_lm, prompt, Constraint.regex(pattern), temperature=temperature)
            assert re.fullmatch(pattern, done.text), done.text
    options = ["yes", "no", "not sure"]
    picked = set()
    for seed in range(8):
        done = _run(torch_lm, "Is the sky red?", Constraint.choice(options), temperature=1.5, seed=seed)
        assert done.text in options
        picked.add(done.text)
    assert len(picked) > 1


def test_a_constraint_the_greedy_reply_meets_leaves_it_unchanged(torch_lm):
    free = _run(torch_lm, "The teacher", None, max_new_tokens=8)
    assert free.text and "\ufffd" not in free.text
    held = _run(torch_lm, "The teacher", Constraint.choice([free.text, "zzz zzz"]), max_new_tokens=8)
    assert held.token_ids == free.token_ids and held.text == free.text


@pytest.mark.parametrize("constraint", [Constraint.json_schema(SCHEMA), Constraint.choice(["yes", "no way"])])
def test_allows_agrees_with_the_mask_on_every_token_at_every_step(torch_lm, constraint):
    import torch

    done = _run(torch_lm, "The cat sees", constraint, temperature=1.0, seed=5)
    guide = Guide(constraint, torch_lm.tokenizer, torch_lm.eos)
    vocab = len(torch_lm.tokenizer)
    for token in [*done.token_ids, None]:  # every state the sampled reply went through, and the end
        masked = guide.mask(torch.zeros(vocab))
        allowed = {t for t in range(vocab) if masked[t] == 0}
        assert allowed == {t for t in range(vocab) if guide.allows(t)}
        assert (set(torch_lm.eos) <= allowed) == guide.satisfied  # EOS exactly where the reply is whole
        if token is None or guide.done:
            break
        assert token in allowed
        guide.advance(token)


def test_greedy_checking_the_argmax_first_equals_always_masking(torch_lm):
    import torch

    c = Constraint.json_schema(SCHEMA)
    for prompt in PROMPTS:
        done = _run(torch_lm, prompt, c)
        ids = prompt_ids(torch_lm.tokenizer, [{"role": "user", "content": prompt}], chat=False)
        step, guide, picked = torch_lm.step(), Guide(c, torch_lm.tokenizer, torch_lm.eos), []
        logits = step.prefill(ids)
        while not guide.done:
            token = int(torch.argmax(guide.mask(logits)))
            if token in torch_lm.eos:
                break
            picked.append(token)
            guide.advance(token)
            logits = step.next(token)
        assert picked == done.token_ids


def test_batched_rows_on_ort_each_valid_and_equal_to_one_by_one(ort_lm):
    tok = ort_lm.tokenizer
    prompts = [prompt_ids(tok, [{"role": "user", "content": p}], chat=False) for p in PROMPTS]
    n = min(map(len, prompts))
    prompts = [p[:n] for p in prompts]  # equal lengths: one OrtBatch
    c = Constraint.json_schema(SCHEMA)
    for temperature in (0.0, 1.0):
        cfg = GenerateConfig(model="tiny", max_new_tokens=160, temperature=temperature, seed=2)
        rows = complete_batch(ort_lm, prompts, cfg, constraint=c)
        alone = [complete(ort_lm.step(), tok, p, cfg, ort_lm.eos, None, c) for p in prompts]
        for row, one in zip(rows, alone):
            _valid(row.text)
            assert row.constraint_satisfied and row.token_ids == one.token_ids


def test_streamed_pieces_are_the_constrained_reply(torch_lm):
    pieces: list[str] = []
    cfg = GenerateConfig(model="tiny", max_new_tokens=160)
    ids = prompt_ids(torch_lm.tokenizer, [{"role": "user", "content": "The river"}], chat=False)
    c = Constraint.json_schema(SCHEMA)
    done = complete(torch_lm.step(), torch_lm.tokenizer, ids, cfg, torch_lm.eos, pieces.append, c)
    assert len(pieces) > 3 and "".join(pieces) == done.text
    _valid(done.text)


def test_the_config_fields_make_the_constraint(tmp_path, torch_lm):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    cfg = GenerateConfig(model="tiny", json_schema=str(schema))
    assert Constraint.from_config(cfg) == Constraint.json_schema(SCHEMA)
    assert Constraint.from_config(GenerateConfig(model="tiny")) is None
    cfg = GenerateConfig(model="tiny", regex="[0-9]{4}", max_new_tokens=30)  # complete() reads cfg itself
    ids = prompt_ids(torch_lm.tokenizer, [{"role": "user", "content": "A year"}], chat=False)
    done = complete(torch_lm.step(), torch_lm.tokenizer, ids, cfg, torch_lm.eos)
    assert re.fullmatch("[0-9]{4}", done.text)
    with pytest.raises(SlmError, match="give one constraint, not --regex and --choice"):
        Constraint.from_config(GenerateConfig(model="tiny", regex="a", choice=["b"]))


def test_the_token_limit_leaves_the_reply_unsatisfied(torch_lm):
    done = _run(torch_lm, "The cat sees", Constraint.json_schema(SCHEMA), max_new_tokens=3)
    assert len(done.token_ids) == 3 and done.constraint_satisfied is False and not done.stopped_at_eos
    assert _run(torch_lm, "The cat sees", None, max_new_tokens=3).constraint_satisfied is None


def test_compiled_matchers_are_cached(torch_lm):
    c = Constraint.regex("[a-z]+")
    assert compiled(c, torch_lm.tokenizer, torch_lm.eos) is compiled(
        Constraint.regex("[a-z]+"), torch_lm.tokenizer, list(reversed(torch_lm.eos))
    )


def test_response_format_builds_the_constraint():
    rf = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA, "strict": True}}
    assert Constraint.from_response_format(rf) == Constraint.json_schema(SCHEMA)
    assert Constraint.from_response_format({"type": "json_object"}) == Constraint.json_object()
    assert Constraint.from_response_format({"type": "text"}) is None
    assert Constraint.from_response_format(None) is None
    with pytest.raises(SlmError, match="json_schema.schema"):
        Constraint.from_response_format({"type": "json_schema", "json_schema": {"name": "p"}})
    with pytest.raises(SlmError, match="not 'xml'"):
        Constraint.from_response_format({"type": "xml"})


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: Constraint.json_schema("{not json"), "not valid JSON"),
        (lambda: Constraint.json_schema("[1, 2]"), "an object or a boolean, not list"),
        (lambda: Constraint.json_schema({"type": "strin"}), "not a JSON Schema .*Invalid type: strin"),
        (lambda: Constraint.json_schema({"properties": []}), "properties must be an object"),
        (
            lambda: Constraint.json_schema({"if": {"type": "string"}, "then": {"minLength": 2}}),
            "keywords LLGuidance does not support: if, then",
        ),
        (lambda: Constraint.json_schema({"type": "string", "format": "x-odd"}), "Unknown format: x-odd"),
        (lambda: Constraint.json_schema({"type": "string", "minLength": 5, "maxLength": 2}), "Unsatisfiable"),
        (lambda: Constraint.regex("a(b"), r"invalid regex \"a\(b\": unclosed group"),
        (lambda: Constraint.choice([]), "at least one string"),
        (lambda: Constraint.choice(["a", ""]), "non-empty string"),
        (lambda: Constraint.lark("start: foo"), 'line 1, column 8: unknown name: "foo"'),
    ],
)
def test_bad_constraints_are_one_line_errors(make, needle):
    with pytest.raises(SlmError, match=needle) as e:
        make()
    assert "\n" not in str(e.value)


def test_a_constraint_no_token_can_start_fails_before_decoding(torch_lm):
    c = Constraint.regex("[a&&b]")  # compiles; matches nothing
    with pytest.raises(SlmError, match=r"no output satisfies regex '\[a&&b\]' with this tokenizer"):
        Guide(c, torch_lm.tokenizer, torch_lm.eos)


def test_a_dead_end_mid_reply_stops_with_an_error_not_output(torch_lm):
    c = Constraint.lark('start: "ab" x\nx: /[a&&b]/')
    with pytest.raises(SlmError, match=r"the Lark grammar reached a dead end after \d+ tokens \('ab'\)") as e:
        _run(torch_lm, "The cat sees", c)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the CLI


def test_cli_generate_under_each_constraint(slm_cli, tiny_model_dir, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    common = ("generate", tiny_model_dir, "-p", "The cat sees", "--backend", "torch", "--threads", "1")
    code, out, err = slm_cli(*common, "--json-schema", schema, "--max-new-tokens", "160")
    assert code == 0, err
    _valid(out.strip())
    code, out, err = slm_cli(*common, "--choice", "red, green,blue", "--temperature", "1", "--seed", "4")
    assert code == 0 and out.strip() in ("red", "green", "blue"), err
    code, out, err = slm_cli(*common, "--regex", "[0-9]{3}")
    assert code == 0 and re.fullmatch("[0-9]{3}", out.strip()), err


def test_cli_chat_replies_under_the_constraint(slm_cli, tiny_model_dir, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond\n/exit\n"))
    code, out, err = slm_cli("chat", tiny_model_dir, "--choice", "alpha,beta", "--backend", "torch")
    assert code == 0, err
    replies = [ln.removeprefix("> ") for ln in out.splitlines() if ln.removeprefix("> ")]
    assert len(replies) == 2 and set(replies) <= {"alpha", "beta"}, out


@pytest.mark.parametrize(
    ("args", "needle", "rc"),
    [
        (("--json-schema", "{bad}"), "not valid JSON", 2),
        (("--json-schema", {"type": "strin"}), "Invalid type: strin", 2),
        (("--json-schema", {"not": {"type": "string"}, "dependentSchemas": {}}), "does not support", 2),
        (("--json-schema", "missing.json"), "no such file", 2),
        (("--regex", "a(b"), "unclosed group", 2),
        (("--choice", ","), "at least one string", 2),
        (("--regex", "[a&&b]"), "no output satisfies", 2),
        (("--grammar", 'start: "ab" x\nx: /[a&&b]/'), "dead end", 2),
        (("--regex", "a", "--json-object"), "give one constraint", 2),
        (("--json-schema", SCHEMA, "--max-new-tokens", "3"), "cut the constrained reply short", 1),
    ],
)
def test_cli_bad_constraints_fail_in_one_line(slm_cli, tiny_model_dir, tmp_path, args, needle, rc):
    args = list(args)
    if args[0] in ("--json-schema", "--grammar") and args[1] != "missing.json":
        f = tmp_path / "c.txt"
        f.write_text(args[1] if isinstance(args[1], str) else json.dumps(args[1]))
        args[1] = f
    code, out, err = slm_cli("generate", tiny_model_dir, "-p", "The cat", "--backend", "torch", *args)
    assert code == rc and needle in err and "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err
