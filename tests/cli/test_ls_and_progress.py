"""`slm ls` marks registry rows whose path is gone, `--prune` drops only them; the epoch bar's rate is steady."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from slmforge.cli import app
from slmforge.core import workspace


def test_ls_marks_missing_and_prune_drops_only_it(tmp_path):
    kept, gone = tmp_path / "kept-model", tmp_path / "gone-model"
    kept.mkdir()
    gone.mkdir()
    workspace.register("model", kept)
    workspace.register("model", gone)
    shutil.rmtree(gone)
    runner = CliRunner()
    r = runner.invoke(app, ["ls"], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    status = {c[2].strip(): c[4].strip() for c in (ln.split("│") for ln in lines) if len(c) > 5}
    assert status == {"kept-model": "ok", "gone-model": "missing"}, r.output
    r = runner.invoke(app, ["ls", "--prune"], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    assert "pruned 1 registry row" in r.output
    paths = [a.path for a in workspace.list_artifacts()]
    assert paths == [str(kept.resolve())]
    assert kept.exists()


def test_epoch_rate_is_steady_across_epochs(monkeypatch):
    """A fake clock: 100 examples per second in every epoch must read as 100 ex/s in every epoch
    (the rate used to divide an epoch's examples by the time since the first epoch)."""
    from slmforge.clf import tuning as classify

    clock = {"t": 0.0}
    monkeypatch.setattr(classify.time, "perf_counter", lambda: clock["t"])
    rates = []
    for _ in range(3):  # the loop's own bookkeeping, as train does it
        seen, epoch_started = 0, classify.time.perf_counter()
        for _ in range(10):
            clock["t"] += 1.0
            seen += 100
        rates.append(classify._rate_text(seen, classify.time.perf_counter() - epoch_started, 0.0))
    assert rates == ["100 ex/s loss 0.000"] * 3


def test_cli_prints_no_third_party_progress_bars(tiny_model_dir, tiny_corpus_dir, tmp_path):
    """`slm` loads and saves models without transformers' own "Loading weights" / "Writing model shards"
    bars reaching the terminal (slmforge's rich bars are the only progress a user sees). Continued
    pretraining both loads (--init) and saves a model."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SLMFORGE_HOME": str(tmp_path / "home")}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    cmd = [sys.executable, "-m", "slmforge.cli", "pretrain", "--init", str(tiny_model_dir)]
    r = subprocess.run([*cmd, "--data", str(tiny_corpus_dir), "--out", str(tmp_path / "run"), "--max-steps", "1"],
                       env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "model" / "config.json").exists()
    for bar in ("Loading weights", "Writing model shards"):
        assert bar not in r.stderr + r.stdout
