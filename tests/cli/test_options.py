"""Guards of the one-declaration rule: every config field documents itself, the CLI's options are the
config's fields (same defaults), `import slmforge.cli` loads no torch, and a verb spanning two model
families refuses the other family's flags."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from slmforge.cli import app
from slmforge.cli.options import REQUIRED, UNKNOWN, Opts, build_options, config_fields

PACKAGE = Path(__file__).resolve().parents[2] / "slmforge"
NOT_NAMED_CONFIG = {"RoutePolicy", "Branch", "ClassifyStep"}  # workflow configs all the same
# TODO(RunConfig): the run block's docstrings arrive with train/run.py's RunConfig (another branch of issue
# 25); until the lead merges it these fields of the three LM trainer configs may go without one.
# The verbs whose default differs from their config's, and why. Any other difference fails the test.
VERB_DEFAULTS = {
    ("generate", "prompt"): ...,  # required here; `slm chat` starts from GenerateConfig's ""
    ("chat", "max_new_tokens"): 256,  # a chat reply; `slm generate` keeps GenerateConfig's 128
    ("tokenizer train", "out"): None,  # then $SLMFORGE_HOME/tokenizers/<data>-<vocab-size>
    ("prune", "layers"): 3,  # pruning drops layers; CompressConfig's None (all) is distill's
    ("rag search", "include_flagged"): True,  # shown, marked; answers (rag ask, pipelines) never use them
    ("rightsize", "eval_data"): None,  # both tasks need it: the verb says so with the task's own message
}


def workflow_configs() -> list[str]:
    """ "module:Class" of every dataclass named *Config in slmforge (and the three route/pipeline ones)."""
    refs = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            named = isinstance(node, ast.ClassDef) and (
                node.name.endswith("Config") or node.name in NOT_NAMED_CONFIG
            )
            if named and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                refs.append(f"{module}:{node.name}")
    return refs


def test_every_field_of_every_workflow_config_has_a_docstring():
    refs = workflow_configs()
    assert len(refs) >= 31 and "slmforge.lm.configs:FinetuneConfig" in refs
    missing = [f"{ref}.{f.name}" for ref in refs for f in config_fields(ref) if not f.doc.strip()]
    assert not missing, f"fields without a docstring: {missing}"


def test_the_source_reader_sees_the_fields_and_defaults_dataclasses_sees():
    for ref in workflow_configs():
        module, name = ref.split(":")
        real = dataclasses.fields(getattr(importlib.import_module(module), name))
        read = config_fields(ref)
        assert [f.name for f in read] == [f.name for f in real], ref
        for r, f in zip(read, real, strict=True):
            if f.default is not dataclasses.MISSING:
                expected = f.default
            elif f.default_factory is not dataclasses.MISSING:
                expected = f.default_factory()
            else:
                expected = REQUIRED
            assert r.default is UNKNOWN or r.default == expected, (ref, f.name, r.default, expected)
            assert r.metadata == dict(f.metadata), (ref, f.name)


def test_import_loads_no_torch_even_with_every_command_built():
    code = (
        "import sys, typer, slmforge.cli; typer.main.get_command(slmforge.cli.app); "
        "print([m for m in ('torch', 'transformers') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def commands(typer_app: typer.Typer, prefix: str = ""):
    for info in typer_app.registered_commands:
        yield f"{prefix}{info.name}", info.callback
    for group in typer_app.registered_groups:
        yield from commands(group.typer_instance, f"{prefix}{group.name} ")


def click_params(name: str) -> dict:
    cmd = typer.main.get_command(app)
    for part in name.split():
        cmd = cmd.commands[part]
    return {p.name: p for p in cmd.params}


def test_every_cli_default_is_its_config_default():
    built, overridden = 0, {}
    for name, callback in commands(app):
        table = getattr(callback, "options", None)
        if table is None:  # a verb without a config (pull, ls, serve, keys, audit, ...)
            continue
        params = click_params(name)
        for opt in table.values():
            shown = params[opt.name].default
            assert shown == (None if opt.default is REQUIRED else opt.default), (name, opt.name)
            if opt.overridden:
                overridden[name, opt.name] = opt.default
                continue
            defaults = [f.default for f in opt.fields.values()]
            if opt.comma:
                defaults = [",".join(map(str, d)) if isinstance(d, list) else d for d in defaults]
            if opt.default is None and (len(set(map(repr, defaults))) > 1 or REQUIRED in defaults):
                continue  # the families differ (or one requires it): each keeps its own when it is not given
            assert all(d == opt.default for d in defaults), (name, opt.name, opt.default, defaults)
            built += 1
    assert built > 250
    assert overridden == VERB_DEFAULTS


@pytest.fixture
def classifier_dir(tmp_path):
    clf = tmp_path / "clf"
    clf.mkdir()
    (clf / "classifier.json").write_text("{}")
    (clf / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    return clf


@pytest.mark.parametrize(
    "args, message",
    [
        (["distill", "CLF", "--data", "t.csv", "--student-depth", "2", "--kd-on", "all"],
         "--student-depth, --kd-on apply to causal-LM teachers; CLF is a classifier"),
        (["distill", "some/hub-lm", "--data", "t.jsonl", "--unlabeled", "more.txt"],
         "--unlabeled apply to classifier teachers; some/hub-lm is a causal LM"),
        (["rightsize", "--task", "generation", "--models", "a,b", "--eval-data", "e.jsonl", "--layers", "2"],
         "--layers: for --task classification, not --task generation"),
        (["rightsize", "--task", "classification", "--data", "t.csv", "--eval-data", "e.csv", "--backend", "ort"],
         "--backend: for --task generation, not --task classification"),
        (["eval", "CLF", "--task", "classification", "--data", "t.csv", "--backend", "ort"],
         "--backend apply to causal LMs; CLF is a classifier"),
        (["eval", "some/hub-lm", "--data", "t.txt", "--report-dir", "r"],
         "--report-dir apply to classifiers; some/hub-lm is a causal LM"),
    ],
)  # fmt: skip
def test_a_flag_of_the_other_family_is_refused_in_one_line(args, message, classifier_dir, tmp_path, slm_cli):
    args = [str(classifier_dir) if a == "CLF" else a for a in args]
    code, _, err = slm_cli(*args, "--out", tmp_path / "out")
    message = message.replace("CLF", str(classifier_dir))
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in " ".join(err.split()), err
    assert not (tmp_path / "out").exists()


def test_a_config_field_becomes_a_flag_with_its_default_type_and_help():
    table = build_options((Opts("slmforge.lm.configs:FinetuneConfig", args=("model",), short={"out": "-o"}),))
    assert table["model"].decls == () and table["out"].decls == ("--out", "-o")
    assert table["seq_len"].decls == ("--seq-len",) and table["seq_len"].default == 512
    assert table["seq_len"].help == "Tokens per sequence (capped at the model's context)."
    assert table["pack"].decls == ("--pack/--no-pack",) and table["resume"].decls == ("--resume",)
    assert table["lr"].type == float | None and table["out"].default is REQUIRED


@pytest.mark.recipe
def test_family_options_merge_defaults_and_convert_values(slm_cli, tmp_path):
    from slmforge.cli.rightsize import CLASSIFICATION, GENERATION

    table = build_options((CLASSIFICATION, GENERATION))
    assert table["layers"].default == "4,3,2" and table["layers"].families == {"classification"}
    assert table["target"].default is None and "exact_match>=0.97*base (generation)" in table["target"].help
    assert table["threads"].families is None and table["data"].default is None  # required by one family only
    code, _, err = slm_cli(
        "rightsize", "--data", "t.csv", "--eval-data", "e.csv", "--layers", "4,x", "--out", tmp_path / "l"
    )
    assert code == 2 and "--layers takes comma-separated integers, e.g. 4,3,2 (got '4,x')" in err
