"""Shared test fixtures: an isolated workspace per test, one torch thread, tiny real inputs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path_factory, monkeypatch):
    """Every test gets its own SLMFORGE_HOME so the registry and caches never leak between tests."""
    monkeypatch.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome")))
    import torch

    torch.set_num_threads(1)
    yield


# ---------------------------------------------------------------- tiny corpus, tokenizer, model
