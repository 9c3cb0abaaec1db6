"""`slm finetune` on a tiny Llama: full SFT that stops at EOS in plain transformers, prompt tuning, exact
resume after an interrupt, time budget, refusal of quantised bases, one-line CLI errors, and tool-calling rows."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from slmforge.core import workspace
from slmforge.core.errors import SlmError
from slmforge.infer.model_dirs import load_finetuned
from slmforge.lm.finetune import FinetuneConfig, finetune

SUBJECTS = ["the cat", "a small dog", "my friend", "the teacher", "our team", "the old man", "a young girl"]
VERBS = ["sees", "likes", "builds", "finds", "reads", "carries", "follows", "paints", "remembers"]
OBJECTS = ["the red house", "a long book", "the green field", "the blue sky", "a new song", "the warm sun"]


def _prompts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        verb = rng.choice(VERBS)
        out.append((f"{rng.choice(SUBJECTS)} {verb} {rng.choice(OBJECTS)}.", verb))
    return out


@pytest.fixture(scope="module")
def verb_data(tmp_path_factory):
    """200 prompt/completion rows: the answer is the sentence's verb (a fixed, learnable pattern)."""
    path = tmp_path_factory.mktemp("sft") / "verbs.jsonl"
    rows = [{"prompt": p, "completion": v} for p, v in _prompts(200, seed=0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(model, data, out, **kw) -> FinetuneConfig:
    base = dict(seq_len=128, batch_size=8, threads=1, precision="fp32", log_every=100, checkpoint_every=100)
    return FinetuneConfig(model=str(model), data=str(data), out=str(out), **{**base, **kw})


def _losses(run) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.recipe
def test_full_sft_learns_and_the_saved_model_stops_at_eos_in_plain_transformers(
    tiny_model_dir, verb_data, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    result = finetune(
        _cfg(tiny_model_dir, verb_data, run, method="full", lr=3e-3, max_steps=60), progress=False
    )
    assert result.train_loss < 0.5 < 5 < result.first_loss
    model_dir = run / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        assert (model_dir / name).exists(), name
    assert (run / "loss.png").exists() and max(_losses(run)) == 60
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.chat_template and im_end in model.generation_config.eos_token_id
    stops = correct = 0
    for prompt, verb in _prompts(50, seed=1):  # unseen combinations
        enc = tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        new = model.generate(**enc, max_new_tokens=24)[0, enc["input_ids"].shape[1] :].tolist()
        stops += len(new) < 24 and new[-1] in model.generation_config.eos_token_id
        correct += tok.decode(new, skip_special_tokens=True) == verb
    assert stops >= 49, stops  # ≥ 98 % end with EOS by themselves
    assert correct >= 40, correct
    kinds = {a.kind: a for a in workspace.list_artifacts()}
    assert kinds["model"].path == str(model_dir.resolve()) and kinds["model"].metrics["method"] == "full"


@pytest.mark.recipe
def test_prompt_tuning_with_20_virtual_tokens_trains_saves_and_loads(tiny_model_dir, verb_data, tmp_path):
    from slmforge.data.sft_data import load_sft
    from slmforge.infer.model_dirs import load
    from slmforge.lm.finetune import masked_loss

    run = tmp_path / "pt"
    result = finetune(
        _cfg(tiny_model_dir, verb_data, run, method="prompt-tuning", lr=0.3, max_steps=40), progress=False
    )
    assert result.trainable_params == 20 * 64 and result.train_loss < result.first_loss - 1
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PROMPT_TUNING" and adapter["num_virtual_tokens"] == 20
    tuned, tok = load_finetuned(run)
    base, _ = load(str(tiny_model_dir))
    rows, _ = load_sft(verb_data, tok, 100)
    tuned_loss = masked_loss(tuned, rows[:64], tok, 16, 0, "cpu")["loss"]
    base_loss = masked_loss(base, rows[:64], tok, 16, 0, "cpu")["loss"]
    assert tuned_loss < base_loss - 1, (tuned_loss, base_loss)
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "the cat sees the red house."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert tuned.generate(**enc, max_new_tokens=8).shape[1] > enc["input_ids"].shape[1]


@pytest.mark.recipe
def test_an_interrupted_run_resumes_with_the_uninterrupted_losses_and_weights(
    tiny_model_dir, verb_data, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from slmforge.train import telemetry

    kw = dict(
        method="lora", lr=1e-2, max_steps=12, checkpoint_every=3, batch_size=4
    )  # LoRA dropout: RNG matters
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    finetune(_cfg(tiny_model_dir, verb_data, straight, **kw), progress=False)

    real_step = telemetry.StepLogger.step

    def crash_after_8(self, step, *args):
        real_step(self, step, *args)
        if step == 8:
            raise KeyboardInterrupt  # like a kill: steps 7 and 8 were logged after the step-6 checkpoint

    monkeypatch.setattr(telemetry.StepLogger, "step", crash_after_8)
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(tiny_model_dir, verb_data, crashed, **kw), progress=False)
    monkeypatch.setattr(telemetry.StepLogger, "step", real_step)
    assert max(_losses(crashed)) == 8 and not (crashed / "adapter").exists()
    finetune(_cfg(tiny_model_dir, verb_data, crashed, resume=True), progress=False)
    a, b = _losses(straight), _losses(crashed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])
    wa = load_file(straight / "adapter" / "adapter_model.safetensors")
    wb = load_file(crashed / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.recipe
def test_resume_refuses_a_different_config_and_a_missing_run(tiny_model_dir, verb_data, tmp_path):
    run = tmp_path / "run"
    finetune(_cfg(tiny_model_dir, verb_data, run, method="lora", max_steps=2), progress=False)
    with pytest.raises(SlmError, match="different config.*lora_r"):
        finetune(_cfg(tiny_model_dir, verb_data, run, lora_r=4, resume=True), progress=False)
    with pytest.raises(SlmError, match="already holds a run"):
        finetune(_cfg(tiny_model_dir, verb_data, run, method="lora", max_steps=2), progress=False)
    with pytest.raises(SlmError, match="nothing to resume"):
        finetune(_cfg(tiny_model_dir, verb_data, tmp_path / "new", resume=True), progress=False)


@pytest.mark.recipe
def test_time_budget_stops_early_and_still_saves(tiny_model_dir, verb_data, tmp_path):
    run = tmp_path / "run"
    result = finetune(
        _cfg(tiny_model_dir, verb_data, run, method="lora", max_steps=10_000, max_minutes=0.02),
        progress=False,
    )
    assert 0 < result.steps < 10_000 and (run / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.recipe
@pytest.mark.parametrize("kind", ["quantization_config", "onnx"])
def test_a_quantised_base_is_refused_naming_the_right_order(tiny_model_dir, verb_data, tmp_path, kind):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    if kind == "onnx":
        (base / "model.safetensors").unlink()
        (base / "model.onnx").write_bytes(b"onnx")
    else:
        config = json.loads((base / "config.json").read_text())
        config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
        (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(SlmError, match="fine-tune the full-precision model, then quantise"):
        finetune(_cfg(base, verb_data, tmp_path / "run", method="lora", max_steps=1), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.recipe
def test_bad_data_fails_in_one_line_and_writes_nothing(tiny_model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"\n')
    with pytest.raises(SlmError, match="1 bad line\\(s\\), first at line 2"):
        finetune(_cfg(tiny_model_dir, data, tmp_path / "run", max_steps=1), progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(SlmError, match="--method must be one of full, lora, prompt-tuning"):
        finetune(_cfg(tiny_model_dir, data, tmp_path / "run", method="qlora"), progress=False)


def test_cli_finetune_and_its_one_line_errors(tiny_model_dir, verb_data, tmp_path):
    import typer
    from typer.testing import CliRunner

    from slmforge.cli import finetune as cli_finetune

    app = typer.Typer()
    cli_finetune.register(app)
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["finetune", str(tiny_model_dir), "--data", str(verb_data), "--out", str(run), "--threads", "1"]
    ok = runner.invoke(
        app, [*args, "--method", "lora", "--max-steps", "2", "--lora-targets", "q_proj,v_proj"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["target_modules"] in (
        ["q_proj", "v_proj"],
        ["v_proj", "q_proj"],
    )
    bad = runner.invoke(app, [*args, "--overwrite", "--on-bad-line", "maybe"])
    assert isinstance(bad.exception, SlmError) and "--on-bad-line must be stop or skip" in str(bad.exception)


def test_the_head_on_labelled_positions_gives_the_full_forwards_loss(tiny_model_dir, verb_data):
    from transformers import AutoTokenizer

    from slmforge.data.sft_data import collate, load_sft, pack
    from slmforge.lm.finetune import _selected_logits_match, _sum_nats, _wrap
    from slmforge.train.pretrained import load_base

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = pack(load_sft(verb_data, tok, 128)[0], 128)
    cfg = _cfg(tiny_model_dir, verb_data, "unused", method="lora", lora_dropout=0.0)
    model = _wrap(load_base(str(tiny_model_dir), "tiny"), cfg, str(tiny_model_dir))
    with torch.no_grad():  # a LoRA delta that matters, so the check covers the adapted layers
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    assert _selected_logits_match(model, rows, 0, "cpu")
    b = collate(rows[:4], 0)
    grads = []
    for selected in (False, True):
        model.zero_grad()
        _sum_nats(model, b, selected).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(g0, g1, atol=1e-5) for g0, g1 in zip(*grads, strict=True))


@pytest.mark.recipe
def test_mfu_counts_the_output_head_on_the_labelled_positions_only(tiny_model_dir, verb_data, tmp_path):
    from slmforge.train.metrics import flops_per_token, head_flops_per_token
    from slmforge.train.pretrained import base_config, load_base

    run = tmp_path / "run"
    finetune(_cfg(tiny_model_dir, verb_data, run, method="full", max_steps=2), progress=False)
    config = base_config(load_base(str(tiny_model_dir), "tiny"))
    full, head = flops_per_token(config, 128), head_flops_per_token(config.hidden_size, config.vocab_size)
    peak = next(iter(json.loads((workspace.home() / "peak_flops.json").read_text()).values()))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in [r for r in rows if "mfu" in r]:
        per_token = r["mfu"] * peak / r["tokens_per_s"]
        # the verb answers are ~2 of each row's ~20 tokens: the head ran on about a tenth of the positions
        assert full - head < per_token < full - 0.6 * head


@pytest.mark.recipe
def test_tool_rows_train_through_a_tools_template_and_a_template_without_tools_is_refused(
    tiny_model_dir, tmp_path
):
    from slmforge.data import tool_calls

    tool = {"type": "function", "function": {"name": "find", "parameters": {"type": "object",
            "properties": {"verb": {"type": "string"}}, "required": ["verb"]}}}  # fmt: skip
    rows = []
    for i, (prompt, verb) in enumerate(_prompts(40, seed=2)):
        call = {"id": f"c{i}", "type": "function", "function": {"name": "find", "arguments": {"verb": verb}}}
        reply = {"role": "assistant", "content": None, "tool_calls": [call]}
        rows.append({"tools": [tool], "messages": [{"role": "user", "content": prompt}, reply]})
    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = Path(__file__).resolve().parents[2] / "examples" / "tools" / "chatml-tools.jinja"
    with pytest.raises(
        SlmError, match=r'line 1 has tools, but the chat template of \S*model ignores "tools"'
    ):
        finetune(_cfg(tiny_model_dir, data, tmp_path / "refused", max_steps=2), progress=False)
    assert not (tmp_path / "refused").exists()
    run = tmp_path / "run"
    kw = dict(method="full", lr=3e-3, max_steps=8, seq_len=512, on_long="error", chat_template=str(template))
    result = finetune(_cfg(tiny_model_dir, data, run, **kw), progress=False)
    assert result.examples == 40 and result.train_loss < result.first_loss - 1
    _, tok = load_finetuned(run)  # the tools template travels with the model, for inference to render alike
    render = lambda m, t, g: tok.apply_chat_template(m, tools=t, tokenize=False, add_generation_prompt=g)  # noqa: E731
    assert tok.chat_template == template.read_text() and tool_calls.template_gap(render) is None
