"""`slm merge`: merged logits equal base + adapter within 1e-4 (fp32), and every refusal is one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from slmforge.core.errors import SlmError
from slmforge.lm.merge import MergeConfig, merge

IDS = torch.tensor([[0, 1, 40, 41, 120, 200, 2, 300, 17, 99], [0, 1, 77, 78, 79, 80, 81, 82, 83, 2]])


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter after a few steps at a high lr, so its B matrices are far from zero."""
    from slmforge.lm.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("lora")
    data = root / "d.jsonl"
    rows = [
        {"prompt": f"the cat number {i} sees the red house.", "completion": f"house {i % 7}"}
        for i in range(64)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before the per-test workspace exists
        mp.setenv("SLMFORGE_HOME", str(root / "home"))
        finetune(
            FinetuneConfig(
                model=str(tiny_model_dir), data=str(data), out=str(root / "run"), method="lora", lr=2e-2,
                max_steps=8, seq_len=128, threads=1, precision="fp32",
            ),
            progress=False,
        )  # fmt: skip
    return root / "run"


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.recipe
def test_merged_logits_equal_base_plus_adapter(tiny_model_dir, lora_run, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = lora_run / "adapter"
    b_norms = [
        float(v.abs().max())
        for k, v in load_file(adapter / "adapter_model.safetensors").items()
        if "lora_B" in k
    ]
    assert b_norms and min(b_norms) > 1e-3  # the adapter really changes the model
    result = merge(MergeConfig(adapter=str(lora_run), out=str(tmp_path / "merged")))  # the run dir works too
    assert result.base == str(tiny_model_dir.resolve())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    reference = _logits(base)
    with_adapter = _logits(PeftModel.from_pretrained(base, adapter).eval())
    merged_model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    merged = _logits(merged_model)
    assert (with_adapter - reference).abs().max() > 1e-2
    assert (merged - with_adapter).abs().max() < 1e-4
    assert not any("lora" in k for k in merged_model.state_dict())
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tok.chat_template
    assert tok.convert_tokens_to_ids("<|im_end|>") in merged_model.generation_config.eos_token_id


@pytest.mark.recipe
def test_merge_refuses_a_quantised_base_naming_the_right_order(tiny_model_dir, lora_run, tmp_path):
    base = tmp_path / "q"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(SlmError, match="merge into the full-precision base first, then quantise"):
        merge(MergeConfig(adapter=str(lora_run / "adapter"), base=str(base), out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()


@pytest.mark.recipe
def test_merge_refuses_an_adapter_for_another_base(tiny_model_dir, lora_run, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other"
    config = LlamaConfig(
        vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    with pytest.raises(SlmError, match="trained on a different base.*hidden_size 64 vs 32"):
        merge(MergeConfig(adapter=str(lora_run / "adapter"), base=str(other), out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()


@pytest.mark.recipe
def test_merge_refuses_prompt_tuning_and_non_adapters(tiny_model_dir, tmp_path):
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pt = get_peft_model(base, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20))
    pt.save_pretrained(tmp_path / "pt")
    with pytest.raises(SlmError, match="prompt-tuning adapter.*nothing to merge"):
        merge(MergeConfig(adapter=str(tmp_path / "pt"), out=str(tmp_path / "m")))
    with pytest.raises(SlmError, match="not a PEFT adapter"):
        merge(MergeConfig(adapter=str(tiny_model_dir), out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()


def test_cli_merge(lora_run, tmp_path):
    import typer
    from typer.testing import CliRunner

    from slmforge.cli import finetune as cli_finetune

    app = typer.Typer()
    cli_finetune.register(app)
    result = CliRunner().invoke(app, ["merge", str(lora_run / "adapter"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").exists() and (
        tmp_path / "m" / "generation_config.json"
    ).exists()
