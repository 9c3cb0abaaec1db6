"""`slm rightsize --task generation` on tiny Llamas: the pick is the smallest rung that meets the target,
every rung is reported, reruns resume without evaluating or fine-tuning again, no pick when nothing meets
the target, and one-line errors for bad input."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.lm import evaluate as gen_eval
from slmforge.ship.rightsize.classification import TASK_METRICS, parse_target
from slmforge.ship.rightsize.generation import RightsizeGenConfig, rightsize_generation

SUBJECTS = ["the cat", "a small dog", "my friend", "the teacher", "our team", "the old man", "a young girl"]
VERBS = ["sees", "likes", "builds", "finds", "reads", "carries", "follows", "paints", "remembers"]
OBJECTS = ["the red house", "a long book", "the green field", "the blue sky", "a new song", "the warm sun"]


def _rows(n: int, seed: int) -> list[dict]:
    """The answer is the sentence's verb: a pattern a tiny model learns in a few dozen steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        verb = rng.choice(VERBS)
        rows.append({"prompt": f"{rng.choice(SUBJECTS)} {verb} {rng.choice(OBJECTS)}.", "completion": verb})
    return rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def ladder(tiny_model_dir, tmp_path_factory):
    """tune.jsonl / eval.jsonl, and three rungs: `big` (the tiny 2-layer Llama, untrained), `small` (a
    1-layer one, untrained) and `verbs-run` (a `slm finetune` run dir: `big` taught the task)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from slmforge.lm.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("rightsize_gen")
    tune = _jsonl(root / "tune.jsonl", _rows(200, seed=0))
    evl = _jsonl(root / "eval.jsonl", _rows(10, seed=1))
    big = root / "big"
    shutil.copytree(tiny_model_dir, big)  # a copy: registering the pick writes a manifest into it
    model = LlamaForCausalLM.from_pretrained(big)
    cfg = model.config
    cfg.num_hidden_layers = 1
    torch.manual_seed(1)
    small = root / "small"
    LlamaForCausalLM(cfg).save_pretrained(small)
    model.generation_config.save_pretrained(small)
    AutoTokenizer.from_pretrained(big).save_pretrained(small)
    run = root / "verbs-run"
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before the per-test workspace exists
        mp.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome_module")))
        finetune(
            FinetuneConfig(model=str(big), data=str(tune), out=str(run), method="full", lr=3e-3, max_steps=60,
                           seq_len=128, batch_size=8, threads=1, precision="fp32", log_every=100,
                           checkpoint_every=100),
            progress=False,
        )  # fmt: skip
    return {"tune": tune, "eval": evl, "big": big, "small": small, "run": run}


def _cfg(ladder, out, models, **kw) -> RightsizeGenConfig:
    base = dict(backend="torch", isolate=False, threads=1, max_new_tokens=6, latency_items=3)
    return RightsizeGenConfig(
        models=[str(ladder[m]) for m in models], eval_data=str(ladder["eval"]), out=str(out), **{**base, **kw}
    )


def _count_evaluations(monkeypatch) -> list[str]:
    calls = []
    real = gen_eval.evaluate_generative

    def counting(cfg, progress=True):
        calls.append(cfg.models[0])
        return real(cfg, progress)

    monkeypatch.setattr(gen_eval, "evaluate_generative", counting)
    return calls


def test_the_pick_is_the_smallest_rung_meeting_the_target_and_reruns_resume(ladder, tmp_path, monkeypatch):
    calls = _count_evaluations(monkeypatch)
    out = tmp_path / "ladder"
    cfg = _cfg(ladder, out, ["big", "run", "small"], target="exact_match>=0.6", shots=2,
               shots_from=str(ladder["tune"]))  # fmt: skip
    r = rightsize_generation(cfg, progress=False)
    names = [t["rung"] for t in r["table"]]
    assert names == ["big@2shot", "big", "verbs-run", "small@2shot", "small"]  # fine-tuned: zero-shot only
    assert len(calls) == 5
    rows = {t["rung"]: t for t in r["table"]}
    assert rows["verbs-run"]["exact_match"] >= 0.6 and rows["verbs-run"]["shots"] == 0
    assert rows["big@2shot"]["shots"] == 2 and rows["big"]["shots"] == 0
    assert rows["small"]["params"] < rows["big"]["params"] == rows["verbs-run"]["params"]
    for t in r["table"]:
        assert t["meets"] == (t["exact_match"] >= 0.6), t["rung"]
        assert t["p50_ms"] > 0 and t["tokens_per_s"] > 0 and t["disk_mb"] > 0 and t["cost_per_1k"] > 0
    assert r["pick"]["rung"] == "verbs-run"  # the untrained rungs answer nonsense: the tuned one meets

    report = (out / "report.md").read_text()
    for name in names:
        assert f"| {name} |" in report
    assert "**pick**" in report and "Pick: **verbs-run**" in report
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((out / "ladder.json").read_text())
    assert state["pick"] == "verbs-run" and set(state["rungs"]) == set(names)
    preds = (out / "predictions" / "verbs-run.jsonl").read_text().splitlines()
    assert len(preds) == 10 and sum(json.loads(p)["exact_match"] for p in preds) >= 6
    picked = [a for a in workspace.list_artifacts() if a.metrics.get("rightsize_pick")]
    assert [a.path for a in picked] == [str((ladder["run"] / "model").resolve())]
    assert picked[0].metrics["rightsize_rung"] == "verbs-run" and picked[0].metrics["exact_match"] >= 0.6

    # rerun with a target every rung meets: nothing is evaluated again, the smallest wins
    r = rightsize_generation(_cfg(ladder, out, ["big", "run", "small"], target="token_f1>=0", shots=2,
                                  shots_from=str(ladder["tune"])), progress=False)  # fmt: skip
    assert len(calls) == 5 and all(t["meets"] for t in r["table"])
    assert r["pick"]["rung"] in ("small", "small@2shot")  # same size: the lower p50 latency decides
    # a rung whose result is gone is the only one evaluated again
    state = json.loads((out / "ladder.json").read_text())
    del state["rungs"]["small"]["eval"]
    (out / "ladder.json").write_text(json.dumps(state))
    r = rightsize_generation(cfg, progress=False)
    assert calls[5:] == [str(ladder["small"])] and r["pick"]["rung"] == "verbs-run"

    # a target no rung meets: no pick, a clear message, every rung still reported
    r = rightsize_generation(_cfg(ladder, out, ["big", "run", "small"], target="exact_match>=0.5,params<=1000",
                                  shots=2, shots_from=str(ladder["tune"])), progress=False)  # fmt: skip
    assert r["pick"] is None and len(calls) == 6 and len(r["table"]) == 5
    report = (out / "report.md").read_text()
    assert "No rung meets every target" in report and "**pick**" not in report
    assert json.loads((out / "ladder.json").read_text())["pick"] is None


def test_base_models_are_tuned_then_evaluated_zero_shot_once(ladder, tmp_path, monkeypatch):
    import slmforge.lm.finetune as ft

    calls = _count_evaluations(monkeypatch)
    out = tmp_path / "ladder"
    cfg = _cfg(ladder, out, ["small"], target="exact_match>=0.5*base", shots=1, tune_data=str(ladder["tune"]),
               tune_method="lora", tune_steps=2, tune_options={"seq_len": 64, "log_every": 100})  # fmt: skip
    r = rightsize_generation(cfg, progress=False)
    rows = {t["rung"]: t for t in r["table"]}
    assert list(rows) == ["small@1shot", "small", "small+lora"] and len(calls) == 3
    tuned = rows["small+lora"]
    assert tuned["variant"] == "tuned" and tuned["shots"] == 0 and tuned["tuned_from"] == str(ladder["small"])
    assert (out / "tuned" / "small" / "adapter" / "adapter_config.json").exists()
    assert tuned["disk_mb"] > tuned["adapter_mb"]  # serving an adapter takes its base too
    assert r["base"]["rung"] == "small@1shot"
    assert r["thresholds"]["exact_match>=0.5*base"] == pytest.approx(0.5 * rows["small@1shot"]["exact_match"])

    def no_training(*a, **k):
        raise AssertionError("fine-tuned again")

    monkeypatch.setattr(ft, "finetune", no_training)
    again = rightsize_generation(cfg, progress=False)
    assert len(calls) == 3 and [t["rung"] for t in again["table"]] == list(rows)


def test_target_metrics_per_task():
    clauses = parse_target("exact_match>=0.85, tokens_per_s>=20, p95_ms<=500", TASK_METRICS["generation"])
    assert [str(c) for c in clauses] == ["exact_match>=0.85", "tokens_per_s>=20", "p95_ms<=500"]
    with pytest.raises(SlmError, match="unknown metric 'accuracy'; known: exact_match, token_f1"):
        parse_target("accuracy>=0.9", TASK_METRICS["generation"])
    with pytest.raises(SlmError, match="unknown metric 'exact_match'"):
        parse_target("exact_match>=0.9")  # classification's metrics are unchanged


def test_bad_target_metric_fails_before_any_work(ladder, tmp_path):
    with pytest.raises(SlmError, match="unknown metric 'accuracy'"):
        rightsize_generation(_cfg(ladder, tmp_path / "l", ["small"], target="accuracy>=0.9"), progress=False)
    with pytest.raises(SlmError, match="--tune-method must be one of lora, full"):
        rightsize_generation(_cfg(ladder, tmp_path / "l", ["small"], tune_data=str(ladder["tune"]),
                                  tune_method="qlora"), progress=False)  # fmt: skip
    assert not (tmp_path / "l").exists()


@pytest.mark.recipe
def test_cli_happy_path(ladder, tmp_path, slm_cli):
    out = tmp_path / "cli"
    code, stdout, err = slm_cli(
        "rightsize", "--task", "generation", "--models", f"{ladder['run']},{ladder['small']}",
        "--eval-data", ladder["eval"], "--out", out, "--target", "exact_match>=0.6", "--backend", "torch",
        "--no-isolate", "--threads", "1", "--max-new-tokens", "6", "--latency-items", "2",
    )  # fmt: skip
    assert code == 0, err
    assert "pick: verbs-run" in stdout and "small" in stdout and "report:" in stdout
    assert json.loads((out / "ladder.json").read_text())["pick"] == "verbs-run"
    code, stdout, err = slm_cli(
        "rightsize", "--task", "generation", "--models", f"{ladder['run']},{ladder['small']}",
        "--eval-data", ladder["eval"], "--out", out, "--target", "exact_match>=1.01", "--backend", "torch",
        "--no-isolate", "--threads", "1", "--max-new-tokens", "6", "--latency-items", "2",
    )  # fmt: skip
    assert code == 0 and "No rung meets every target" in stdout and err.count("resumed") == 2, err


@pytest.mark.recipe
@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "generation", "--eval-data", "EVAL"], "needs --models"),
        (["--task", "generation", "--models", "SMALL"], "needs --eval-data"),
        (["--task", "generation", "--models", "SMALL", "--eval-data", "EVAL", "--data", "EVAL"],
         "--data: for --task classification"),
        (["--task", "classification", "--eval-data", "EVAL"], "needs --data"),
        (["--task", "classification", "--data", "EVAL", "--eval-data", "EVAL", "--models", "SMALL"],
         "--models: for --task generation"),
        (["--task", "generation", "--models", "SMALL", "--eval-data", "EVAL", "--target", "accuracy>=0.9"],
         "unknown metric 'accuracy'"),
        (["--task", "generation", "--models", "SMALL", "--eval-data", "EVAL", "--target", ""], "--target is empty"),
        (["--task", "generation", "--models", "nope-model", "--eval-data", "EVAL"], "no model 'nope-model'"),
        (["--task", "generation", "--models", "SMALL", "--eval-data", "missing.jsonl"], "does not exist"),
        (["--task", "generation", "--models", "SMALL,SMALL", "--eval-data", "EVAL"], "lists a model twice"),
        (["--task", "summarise", "--eval-data", "EVAL"], "--task must be classification or generation"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line(args, message, ladder, tmp_path, slm_cli):
    swap = {"EVAL": str(ladder["eval"]), "SMALL": str(ladder["small"]),
            "SMALL,SMALL": f"{ladder['small']},{ladder['small']}"}  # fmt: skip
    code, _, err = slm_cli("rightsize", *[swap.get(a, a) for a in args], "--out", tmp_path / "l")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "l").exists()
