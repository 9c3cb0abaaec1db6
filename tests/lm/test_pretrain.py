"""The pretraining loop: HF artifacts, exact resume after SIGKILL, DDP parity, checkpoint safety, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.lm.pretrain import PretrainConfig, pretrain

TINY = dict(depth="2", seq_len=32, batch_size=4, eval_every=4, eval_windows=8, precision="fp32", log_every=1)


def _cfg(corpus, tok, out, **kw) -> PretrainConfig:
    return PretrainConfig(data=str(corpus), tokenizer=str(tok), out=str(out), **{**TINY, **kw})


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.recipe
def test_pretrain_writes_a_plain_hf_model_that_learns(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = pretrain(
        _cfg(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path / "run", max_steps=12), progress=False
    )
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 13))
    assert losses[12] < losses[1] - 0.5  # it learns the grammar quickly
    assert result.val is not None and result.val["bpb"] > 0
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == result.params
    assert model.generation_config.eos_token_id == tok.eos_token_id
    kinds = {a.kind for a in workspace.list_artifacts()}
    assert {"run", "model"} <= kinds
    assert workspace.read_manifest(result.model_dir)["kind"] == "model"


@pytest.mark.recipe
def test_trained_model_greedy_equals_transformers(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmforge.infer.generate import GenerateConfig, generate

    result = pretrain(
        _cfg(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path / "run", max_steps=20), progress=False
    )
    prompt = "The cat sees"
    ours = generate(GenerateConfig(model=result.model_dir, prompt=prompt, chat=False, max_new_tokens=16))
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    ids = tok(prompt, return_tensors="pt").input_ids
    ref = model.generate(ids, do_sample=False, max_new_tokens=16)
    assert ours == tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)


def test_ladder_parameter_count_matches_the_built_model():
    from transformers import LlamaForCausalLM

    from slmforge.lm.ladder import build_config, ladder

    for depth in (2, 4, 6):
        spec = ladder(depth, vocab_size=1000)
        model = LlamaForCausalLM(build_config(spec, 1000, 0, 0))
        assert sum(p.numel() for p in model.parameters()) == spec.params
    assert ladder(8, 8192).params > 4 * ladder(4, 8192).params


@pytest.mark.recipe
def test_continued_pretraining_from_an_hf_model(tiny_corpus_dir, tiny_model_dir, tmp_path):
    cfg = PretrainConfig(
        data=str(tiny_corpus_dir),
        init=str(tiny_model_dir),
        out=str(tmp_path / "cpt"),
        seq_len=32,
        batch_size=4,
        max_steps=10,
        lr=3e-3,
        precision="fp32",
        eval_every=10,
    )
    result = pretrain(cfg, progress=False)
    losses = _losses(tmp_path / "cpt")
    assert losses[10] < losses[1]
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    after = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert after.config.vocab_size == before.config.vocab_size  # the model's own tokenizer was used
    assert (Path(result.model_dir) / "tokenizer.json").read_text() == (
        tiny_model_dir / "tokenizer.json"
    ).read_text()
    delta = (after.model.embed_tokens.weight - before.model.embed_tokens.weight).abs().max()
    assert delta > 1e-4  # the weights moved from the init


_KILL_AT_STEP_8 = textwrap.dedent(
    """
    import os, signal, sys
    from slmforge.train import telemetry as t
    original = t.StepLogger.step
    def step(self, step, *a, **kw):
        original(self, step, *a, **kw)
        if step == 8:
            os.kill(os.getpid(), signal.SIGKILL)
    t.StepLogger.step = step
    sys.argv = ["slm"] + sys.argv[1:]
    from slmforge.cli import main
    main()
    """
)


def _cli_args(corpus, tok, out, steps=12):
    return [
        "pretrain",
        "--data",
        str(corpus),
        "--tokenizer",
        str(tok),
        "--out",
        str(out),
        "--depth",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--max-steps",
        str(steps),
        "--checkpoint-every",
        "3",
        "--eval-every",
        "100",
        "--precision",
        "fp32",
        "--threads",
        "1",
    ]


def test_sigkill_then_resume_gives_the_uninterrupted_losses(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(
        [sys.executable, "-m", "slmforge.cli", *_cli_args(tiny_corpus_dir, tiny_tokenizer_dir, straight)],
        check=True,
        env=env,
        capture_output=True,
    )
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_AT_STEP_8, *_cli_args(tiny_corpus_dir, tiny_tokenizer_dir, killed)],
        env=env,
        capture_output=True,
    )
    assert (
        proc.returncode == -9
    )  # really killed, mid-run: steps 7 and 8 were logged after the step-6 checkpoint
    assert max(_losses(killed)) == 8
    assert not (killed / "model").exists()
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmforge.cli",
            *_cli_args(tiny_corpus_dir, tiny_tokenizer_dir, killed),
            "--resume",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 6" in resumed.stderr
    a, b = _losses(straight), _losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])


def test_torchrun_two_processes_match_one_process(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    common = [
        "--data",
        str(tiny_corpus_dir),
        "--tokenizer",
        str(tiny_tokenizer_dir),
        "--depth",
        "2",
        "--seq-len",
        "32",
        "--max-steps",
        "5",
        "--eval-every",
        "100",
        "--precision",
        "fp32",
    ]
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmforge.cli",
            "pretrain",
            *common,
            "--out",
            str(tmp_path / "one"),
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "slmforge.cli",
            "pretrain",
            *common,
            "--out",
            str(tmp_path / "two"),
            "--batch-size",
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ddp.returncode == 0, ddp.stderr
    assert "threads 1 × 2 process(es)" in ddp.stderr
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-3


@pytest.mark.recipe
def test_corrupted_checkpoint_is_detected(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    pretrain(_cfg(tiny_corpus_dir, tiny_tokenizer_dir, run, max_steps=6, checkpoint_every=3), progress=False)
    newest, older = run / "ckpt" / "step_00000006.pt", run / "ckpt" / "step_00000003.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    from slmforge.train import checkpoint

    with pytest.warns(UserWarning, match="corrupted"):
        assert checkpoint.load_latest(run)["step"] == 3
    older.write_bytes(older.read_bytes()[:100])  # truncated
    with pytest.raises(SlmError, match="corrupted"), pytest.warns(UserWarning):
        checkpoint.load_latest(run)


@pytest.mark.recipe
def test_full_disk_during_checkpoint_keeps_the_previous_one(
    tiny_corpus_dir, tiny_tokenizer_dir, tmp_path, monkeypatch
):
    import errno

    from slmforge.train import checkpoint

    run = tmp_path / "run"
    pretrain(_cfg(tiny_corpus_dir, tiny_tokenizer_dir, run, max_steps=3, checkpoint_every=3), progress=False)

    def disk_full(obj, f, *a, **kw):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(SlmError, match="No space left on device"):
        checkpoint.save(run, 6, {"step": 6})
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["index.json", "step_00000003.pt"]
    monkeypatch.undo()
    assert checkpoint.load_latest(run)["step"] == 3


@pytest.mark.recipe
def test_resume_rejects_a_different_config(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    pretrain(_cfg(tiny_corpus_dir, tiny_tokenizer_dir, run, max_steps=3), progress=False)
    with pytest.raises(SlmError, match=r"different config \(seq_len: 32 -> 64\)"):
        pretrain(
            _cfg(tiny_corpus_dir, tiny_tokenizer_dir, run, max_steps=3, seq_len=64, resume=True),
            progress=False,
        )
    with pytest.raises(SlmError, match="already holds a run"):
        pretrain(_cfg(tiny_corpus_dir, tiny_tokenizer_dir, run, max_steps=3), progress=False)
    with pytest.raises(SlmError, match="nothing to resume"):
        pretrain(_cfg(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path / "new", resume=True), progress=False)


@pytest.mark.recipe
def test_depth_that_does_not_fit_is_refused_before_training(
    tiny_corpus_dir, tiny_tokenizer_dir, tmp_path, monkeypatch
):
    from slmforge.lm import pretrain as p

    monkeypatch.setattr(p, "_available_ram", lambda: 64 * 2**20)
    with pytest.raises(SlmError, match=r"needs about .* GiB to train but only 0.1 GiB is free"):
        pretrain(
            _cfg(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path / "run", depth="12", max_steps=1),
            progress=False,
        )
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent", "--tokenizer", "x"], "does not exist"),
        (["--depth", "40"], "out of range"),
        (["--depth", "huge"], "unknown size"),
        (["--lr", "5"], "out of range"),
        (["--seq-len", "0"], "must be at least 1"),
        (["--seq-len", "100000"], "fewer training tokens than one sequence"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    base = {
        "--data": str(tiny_corpus_dir),
        "--tokenizer": str(tiny_tokenizer_dir),
        "--out": str(tmp_path / "r"),
        "--max-steps": "1",
        "--precision": "fp32",
    }
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = [x for kv in base.items() for x in kv]
    proc = subprocess.run(
        [sys.executable, "-m", "slmforge.cli", "pretrain", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "r" / "model").exists()
