"""The run block: the three LM trainer configs share RunConfig's fields as flat keywords, and "may change on
resume" is field metadata that `fixed_changes` / `resume_config` read."""

from __future__ import annotations

import dataclasses

import pytest

from slmforge.core.errors import SlmError
from slmforge.lm.configs import DistillLMConfig, FinetuneConfig, PretrainConfig
from slmforge.train.run import RunConfig, check_run_block, fixed_changes, may_change, resume_config


def test_the_configs_keep_flat_keywords_and_positional_own_fields():
    p = PretrainConfig("data", "out", "tok", eval_every=7, seed=3)
    assert (p.data, p.out, p.tokenizer, p.eval_every, p.seed) == ("data", "out", "tok", 7, 3)
    assert (p.eval_every, p.checkpoint_every) == (7, 100)
    assert PretrainConfig("d", "o").eval_every == 100
    assert FinetuneConfig("m", "d", "o").eval_every == DistillLMConfig("t", "d", "o").eval_every == 50
    run = {f.name for f in dataclasses.fields(RunConfig)}
    for cls in (PretrainConfig, FinetuneConfig, DistillLMConfig):
        assert run <= {f.name for f in dataclasses.fields(cls)}


def test_may_change_is_field_metadata():
    free = {
        c: {f.name for f in dataclasses.fields(c) if may_change(f)} for c in (PretrainConfig, DistillLMConfig)
    }
    common = {
        "resume",
        "overwrite",
        "max_minutes",
        "threads",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "device",
    }
    assert free[PretrainConfig] == common | {"compile"}
    assert free[DistillLMConfig] == common | {"kl_examples"}
    assert {f.name for f in dataclasses.fields(FinetuneConfig) if may_change(f)} == common


def test_resume_fills_defaults_from_the_saved_run_and_names_fixed_changes():
    saved = dataclasses.asdict(FinetuneConfig("m", "d", "o", lr=1e-3, seed=4))
    cfg = resume_config(FinetuneConfig("m", "d", "o", resume=True, max_minutes=5), saved)
    assert (cfg.lr, cfg.seed, cfg.max_minutes) == (1e-3, 4, 5)
    assert fixed_changes(saved, FinetuneConfig("m", "d", "o", lr=2e-3, seed=4, threads=2)) == ["lr"]
    with pytest.raises(SlmError, match=r"--resume with a different config \(seed: 4 -> 5\)"):
        resume_config(FinetuneConfig("m", "d", "o", seed=5), saved)


@pytest.mark.parametrize(
    "bad, message",
    [({"max_minutes": 0}, "--max-minutes must be positive"), ({"max_steps": 0}, "--max-steps must be at least 1"),
     ({"eval_every": 0}, "--eval-every must be at least 1"), ({"precision": "fp8"}, "--precision must be auto")],
)  # fmt: skip
def test_the_run_block_is_checked_once_for_every_trainer(bad, message):
    for config in (
        PretrainConfig(data="d", out="o", **bad),
        FinetuneConfig(model="m", data="d", out="o", **bad),
        DistillLMConfig(teacher="t", data="d", out="o", **bad),
    ):
        with pytest.raises(SlmError, match=message):
            check_run_block(config)
