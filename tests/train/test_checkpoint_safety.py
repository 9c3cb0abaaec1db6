"""Resume never unpickles code: a crafted checkpoint with a matching index and checksum is refused.

The attack: whoever can write a run's `ckpt/` can also rewrite `index.json`, so the checksum only guards
against torn copies. Loading must therefore accept nothing but tensors and plain values.
"""

from __future__ import annotations

import dataclasses
import pickle
import random

import numpy as np
import pytest
import torch

from slmforge.core.errors import SlmError
from slmforge.core.fsutil import sha256_file, write_json
from slmforge.train import checkpoint


class _WritesMarker:
    """Unpickling this runs `open(marker, 'w')`: what a shell command would do, observable and harmless."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(run, data: bytes, step: int = 3) -> None:
    """`data` as the run's newest checkpoint, with an index entry whose sha256 matches it."""
    ckpt = run / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    path = ckpt / f"step_{step:08d}.pt"
    path.write_bytes(data)
    write_json(ckpt / "index.json", [{"step": step, "file": path.name, "sha256": sha256_file(path)}])


def _torch_saved(obj, tmp_path) -> bytes:
    path = tmp_path / "forged.pt"
    torch.save(obj, path)
    return path.read_bytes()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch.save zip", "raw pickle"])
def test_a_forged_checkpoint_is_refused_and_runs_nothing(tmp_path, fmt):
    marker = tmp_path / "pwned"
    payload = {"step": 3, "elapsed_s": 0.0, "model": {}, "rng": _WritesMarker(marker)}
    data = _torch_saved(payload, tmp_path) if fmt == "torch.save zip" else pickle.dumps(payload)
    pickle.loads(pickle.dumps(_WritesMarker(tmp_path / "probe")))  # the payload really is live ...
    assert (tmp_path / "probe").exists()
    run = tmp_path / "run"
    _plant(run, data)
    with pytest.raises(SlmError) as e:
        checkpoint.load_latest(run)
    assert not marker.exists()  # ... and resuming never ran it
    message = str(e.value)
    assert "\n" not in message and "refuses to load" in message and "without --resume" in message
    if fmt == "torch.save zip":
        assert "io.open" in message  # the offending global, named


@pytest.mark.recipe
def test_resume_through_pretrain_refuses_a_forged_checkpoint(tiny_corpus_dir, tiny_tokenizer_dir, tmp_path):
    from slmforge.lm.pretrain import PretrainConfig, pretrain

    run, marker = tmp_path / "run", tmp_path / "pwned"
    cfg = PretrainConfig(
        data=str(tiny_corpus_dir), tokenizer=str(tiny_tokenizer_dir), out=str(run), depth="2", seq_len=32,
        batch_size=4, precision="fp32", max_steps=3, checkpoint_every=3,
    )  # fmt: skip
    pretrain(cfg, progress=False)
    state = torch.load(run / "ckpt" / "step_00000003.pt", weights_only=True)
    state["rng"] = _WritesMarker(marker)  # a real checkpoint, one value swapped for the payload
    _plant(run, _torch_saved(state, tmp_path))
    with pytest.raises(SlmError, match="refuses to load"):
        pretrain(dataclasses.replace(cfg, resume=True), progress=False)
    assert not marker.exists()


def test_an_older_slmforge_checkpoint_is_refused_with_its_reason(tmp_path):
    """Before this change the RNG states were pickled as numpy arrays and python tuples."""
    old = {
        "step": 3,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }
    run = tmp_path / "run"
    _plant(run, _torch_saved(old, tmp_path))
    with pytest.raises(SlmError, match="written by an older slmforge") as e:
        checkpoint.load_latest(run)
    assert "\n" not in str(e.value)


def test_rng_state_round_trips_exactly_through_a_safe_load(tmp_path):
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    random.gauss(0, 1), np.random.standard_normal()  # a cached gaussian on both: part of the state
    checkpoint.save(tmp_path, 1, {"step": 1, "rng": checkpoint.rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    checkpoint.restore_rng(checkpoint.load_latest(tmp_path)["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_no_torch_load_in_slmforge_unpickles():
    """Every torch.load in the package passes weights_only=True (the default could change back)."""
    import re
    from pathlib import Path

    import slmforge

    calls = []
    for path in Path(slmforge.__file__).parent.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        calls += [(path.name, m.group(0)) for m in re.finditer(r"torch\.load\([^)]*\)", text)]
    assert calls and all("weights_only=True" in call for _, call in calls), calls
