"""Pipelines: the bank example end to end (quick build), routing by label, low-confidence cascade,
fallbacks, template / generate / generative RAG branches, and one-line errors for bad YAML."""

from __future__ import annotations

import json

import pytest

from slmforge.core.errors import SlmError
from slmforge.route.pipeline import build_bank_example, load_pipelines


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    """examples/bank built with the quick settings (8 examples per intent, 1 epoch); its workspace dir."""
    root = tmp_path_factory.mktemp("bank")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome_bank")))
        config = build_bank_example(str(root), quick=True, threads=1)
    return config.parent


def _pipe(bank, **spec):
    base = {"classify": {"model": "intents"}, "routes": {"*": {"type": "template", "text": "{label}"}}}
    return load_pipelines({"pipelines": {"p": {**base, **spec}}}, base_dir=str(bank))["p"]


def test_stolen_card_is_answered_from_the_knowledge_base_with_a_citation(bank):
    pipe = load_pipelines(bank / "pipelines.yaml")["bank"]
    out = pipe.run("my credit card was stolen")
    assert out["label"] == "lost_or_stolen_card" and out["route"] == "lost_or_stolen_card"
    assert out["branch"] == "rag" and not out["escalated"]
    assert out["confidence"] >= 0.35
    assert [c["n"] for c in out["citations"]] == [1, 2]
    for cite in out["citations"]:
        assert cite["doc"] == "stolen-card.md" and cite["path"] == "kb/lost_or_stolen_card/stolen-card.md"
        assert cite["section"].startswith("Stolen card > ") and cite["text"] in out["answer"]
    assert "[1]" in out["answer"] and out["answer"].endswith("[2]")
    assert "freeze" in out["answer"].lower()  # the first thing to do
    assert [s["step"] for s in out["steps"]] == ["classify", "rag"]
    assert out["steps"][1]["path_filter"] == "*/lost_or_stolen_card/*"
    json.dumps(out)  # JSON-serialisable as the server returns it


def test_routes_by_label_with_a_catch_all(bank):
    pipe = _pipe(
        bank,
        routes={
            "exchange_rate": {"type": "template", "text": "rates: {label} {confidence}"},
            "*": {"type": "template", "text": "other: {label} / {text}"},
        },
    )
    rate = pipe.run("what is the exchange rate for dollars today")
    assert rate["label"] == "exchange_rate" and rate["route"] == "exchange_rate"
    assert rate["answer"] == f"rates: exchange_rate {rate['confidence']:.2f}"
    other = pipe.run("I want to close my account {label}")  # braces in user text are not templates
    assert (
        other["route"] == "*"
        and other["answer"] == f"other: {other['label']} / I want to close my account {{label}}"
    )


def test_unrouted_label_goes_to_the_fallback(bank):
    pipe = _pipe(
        bank,
        routes={"exchange_rate": {"type": "template", "text": "x"}},
        fallback={"type": "human", "queue": "q1"},
    )
    out = pipe.run("I want to close my account")
    assert out["route"] == "fallback" and out["escalated"] and out["queue"] == "q1"


def test_low_confidence_cascades_to_a_bigger_model_then_to_a_human(bank):
    # the first model is never confident enough (min 1.0); the "bigger" one (here the same dir) is trusted
    trusting = _pipe(
        bank,
        classify={"model": "intents", "min_confidence": 1.0},
        low_confidence={"type": "cascade", "model": "intents", "min_confidence": 0.0},
    )
    out = trusting.run("my credit card was stolen")
    assert out["route"] == "cascade:*" and out["answer"] == out["label"] == "lost_or_stolen_card"
    assert out["first_label"] == "lost_or_stolen_card"
    assert [s["step"] for s in out["steps"]] == ["classify", "route", "cascade", "template"]

    doubtful = _pipe(
        bank,
        classify={"model": "intents", "min_confidence": 1.0},
        low_confidence={"type": "cascade", "model": "intents", "min_confidence": 1.0},
        fallback={"type": "human", "message": "a person will call you"},
    )
    out = doubtful.run("my credit card was stolen")
    assert (
        out["route"] == "cascade:fallback" and out["escalated"] and out["answer"] == "a person will call you"
    )

    human = _pipe(bank, classify={"model": "intents", "min_confidence": 1.0})
    out = human.run("my credit card was stolen")
    assert out["route"] == "low_confidence" and out["escalated"]  # no low_confidence branch: the fallback


def test_rag_with_nothing_relevant_falls_back(bank):
    pipe = _pipe(bank, routes={"*": {"type": "rag", "index": "kb.sqlite", "min_cosine": 0.99}})
    out = pipe.run("my credit card was stolen")
    assert out["route"] == "* -> fallback" and out["escalated"] and out["citations"] == []


def test_generate_and_generative_rag_branches(bank, tiny_model_dir):
    model = str(tiny_model_dir)
    pipe = _pipe(
        bank,
        routes={
            "lost_or_stolen_card": {"type": "rag", "index": "kb.sqlite", "model": model, "min_cosine": 0.0,
                                    "max_new_tokens": 8, "context_tokens": 400, "path_filter": "*/{label}/*"},
            "*": {"type": "generate", "model": model, "max_new_tokens": 8, "system": "Be brief."},
        },
    )  # fmt: skip
    rag = pipe.run("my credit card was stolen")
    assert rag["branch"] == "rag" and rag["citations"]
    assert all(c["path"].startswith("kb/lost_or_stolen_card/") for c in rag["citations"])  # never absolute
    assert f"[{rag['citations'][0]['n']}]" in rag["answer"]
    gen = pipe.run("what is the exchange rate for dollars today")
    assert gen["branch"] == "generate" and isinstance(gen["answer"], str)
    assert gen["steps"][-1]["step"] == "generate"


def test_bad_yaml_is_a_one_line_error_naming_step_and_field(tmp_path):
    def error(spec) -> str:
        with pytest.raises(SlmError) as e:
            load_pipelines(spec, base_dir=str(tmp_path))
        assert "\n" not in str(e.value)
        return str(e.value)

    ok_routes = {"*": {"type": "human"}}
    assert "top-level 'pipelines:'" in error({"pipe": {}})
    assert "step 'classify': field 'model' is required" in error({"pipelines": {"p": {"routes": ok_routes}}})
    p = {"classify": {"model": "m"}}
    assert "field 'routes' is required" in error({"pipelines": {"p": p}})
    assert "route 'x' (rag): field 'index' is required" in error(
        {"pipelines": {"p": {**p, "routes": {"x": {"type": "rag"}}}}}
    )
    assert "route 'x': field 'type' must be one of rag, template" in error(
        {"pipelines": {"p": {**p, "routes": {"x": {"type": "llm"}}}}}
    )
    assert "route 'x' (template): unknown field 'txt'" in error(
        {"pipelines": {"p": {**p, "routes": {"x": {"type": "template", "txt": "hi"}}}}}
    )
    assert "step 'classify': field 'min_confidence': expected a number in [0, 1]" in error(
        {"pipelines": {"p": {"classify": {"model": "m", "min_confidence": 5}, "routes": ok_routes}}}
    )
    assert "step 'low_confidence' (rag): field 'k' must be a positive integer" in error(
        {
            "pipelines": {
                "p": {**p, "routes": ok_routes, "low_confidence": {"type": "rag", "index": "i", "k": 0}}
            }
        }
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipelines:\n  p: {classify: [\n")
    assert "is not valid YAML (line" in error(str(bad))
    assert "does not exist" in error(str(tmp_path / "missing.yaml"))


def test_empty_text_is_refused(bank):
    with pytest.raises(SlmError, match="empty"):
        _pipe(bank).run("  ")
