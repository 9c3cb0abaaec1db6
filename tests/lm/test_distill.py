"""Causal-LM distillation on tiny Llamas: logit KD moves the student towards the teacher, tokenizers must
match for it (else one line naming --method sequence), sequence-level KD trains on the teacher's own
greedy completions across tokenizers, --student-depth cuts a student from the teacher, and `slm distill`
dispatches causal-LM teachers here and classifiers to the encoder path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slmforge.core.errors import SlmError
from slmforge.lm.distill import (
    DistillLMConfig,
    build_student,
    distill_lm,
    layer_indices,
    teacher_kl,
)
from slmforge.train.losses import kl_sum

FAST = dict(seq_len=128, batch_size=4, threads=1, checkpoint_every=1000)


def _llama(tokenizer, out: Path, seed: int, hidden: int = 32, layers: int = 1) -> Path:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos = [tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=eos[0], eos_token_id=eos[0], pad_token_id=eos[0], initializer_range=0.1,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=eos[0], eos_token_id=eos, pad_token_id=eos[0])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    """40 prompt/completion rows from the tiny corpus's grammar."""
    from tests.conftest import _tiny_docs

    path = tmp_path_factory.mktemp("kd_data") / "train.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for doc in _tiny_docs(40, seed=3):
            words = doc.split(". ")[0].split()
            f.write(json.dumps({"prompt": " ".join(words[:3]), "completion": " ".join(words[3:])}) + "\n")
    return path


@pytest.fixture(scope="module")
def same_tok_student(tiny_model_dir, tmp_path_factory) -> Path:
    """A differently initialised, narrower 1-layer Llama on the teacher's tokenizer."""
    from transformers import AutoTokenizer

    return _llama(AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path_factory.mktemp("s") / "m", seed=1)


@pytest.fixture(scope="module")
def other_tok_student(tiny_corpus_dir, tmp_path_factory) -> Path:
    """A tiny Llama on its own, smaller BPE tokenizer (300 tokens): a different token → id map."""
    from transformers import AutoTokenizer

    from slmforge.data.tokenizer import TokenizerConfig, train_tokenizer

    tok_dir = tmp_path_factory.mktemp("other_tok") / "tok"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMFORGE_HOME", str(tmp_path_factory.mktemp("slmhome_kd")))
        train_tokenizer(
            TokenizerConfig(data=str(tiny_corpus_dir), out=str(tok_dir), vocab_size=300), progress=False
        )
    return _llama(AutoTokenizer.from_pretrained(tok_dir), tmp_path_factory.mktemp("o") / "m", seed=2)


@pytest.mark.recipe
def test_logit_distillation_lowers_the_kl_to_the_teacher(
    tiny_model_dir, same_tok_student, sft_file, tmp_path
):
    out = tmp_path / "kd"
    r = distill_lm(
        DistillLMConfig(teacher=str(tiny_model_dir), student=str(same_tok_student), data=str(sft_file),
                        out=str(out), max_steps=25, lr=1e-2, alpha=0.9, **FAST),
        progress=False,
    )  # fmt: skip
    assert r.steps == 25 and r.kl_before is not None
    assert r.kl_after < 0.7 * r.kl_before, (r.kl_before, r.kl_after)
    # the reported KL is the measured one, and the saved student is what was measured
    assert teacher_kl(str(tiny_model_dir), r.model_dir, str(sft_file), 128) == pytest.approx(
        r.kl_after, rel=1e-4
    )
    model = Path(r.model_dir)
    assert (model / "model.safetensors").exists() and "im_start" in (
        model / "chat_template.jinja"
    ).read_text()
    im_end = json.loads((model / "tokenizer.json").read_text())["added_tokens"]
    im_end = next(t["id"] for t in im_end if t["content"] == "<|im_end|>")
    assert im_end in json.loads((model / "generation_config.json").read_text())["eos_token_id"]
    assert json.loads((out / "distill.json").read_text())["kl_after"] == r.kl_after
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 25 and (out / "ckpt").is_dir()


def test_alpha_zero_is_plain_cross_entropy():
    from slmforge.train.losses import kd_loss_sum

    s, t, y = torch.randn(5, 11), torch.randn(5, 11), torch.randint(0, 11, (5,))
    ce = torch.nn.functional.cross_entropy(s, y, reduction="sum")
    assert torch.allclose(kd_loss_sum(s, t, y, 2.0, 0.0), ce)
    assert torch.allclose(kd_loss_sum(s, s.clone(), y, 2.0, 1.0), torch.tensor(0.0), atol=1e-5)  # KL(p‖p) = 0


def test_kd_top_k_matches_the_teachers_top_tokens_only():
    """--kd-top-k k: the teacher's softmax at T over its k best ids (zero elsewhere) against the student's
    full softmax; k = 0 or k ≥ vocabulary is the plain KL."""
    torch.manual_seed(0)
    s, t = torch.randn(4, 50), torch.randn(4, 50)
    full = kl_sum(s, t, 2.0)
    assert torch.allclose(kl_sum(s, t, 2.0, 50), full) and torch.allclose(kl_sum(s, t, 2.0, 0), full)
    top, ids = t.topk(5, dim=-1)
    p = torch.softmax(top / 2.0, -1)
    manual = 4.0 * (p * (p.log() - torch.log_softmax(s / 2.0, -1).gather(-1, ids))).sum()
    assert torch.allclose(kl_sum(s, t, 2.0, 5), manual)
    # a student that puts all its mass on the teacher's top 5, in the teacher's proportions, matches exactly;
    # one that copies the teacher's whole distribution is charged for its mass on the other 45 ids
    copy_top = torch.full_like(t, -1e4).scatter(-1, ids, top)
    assert float(kl_sum(copy_top, t, 2.0, 5)) == pytest.approx(0.0, abs=1e-4)
    assert float(kl_sum(t.clone(), t, 2.0, 5)) > 1.0


def test_kd_on_all_takes_the_kl_over_every_real_token(tiny_model_dir, same_tok_student):
    """--kd-on all: alpha · mean KL over every non-padding position (prompt too) + (1 − alpha) · mean CE on
    the completion, as a sum scaled to the labelled count; completion-only KL ignores the prompt."""
    from transformers import AutoModelForCausalLM

    from slmforge.data.sft_data import IGNORE, Example, collate
    from slmforge.lm.distill import TeacherLoss

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir).float()
    student = AutoModelForCausalLM.from_pretrained(same_tok_student).float()
    rows = [
        Example([5, 6, 7, 8, 9, 10], [IGNORE] * 4 + [9, 10]),
        Example([11, 12, 13, 14], [IGNORE] * 3 + [14]),
    ]
    b = collate(rows, pad_id=0)  # the second row is padded: its last two positions must not count
    with torch.no_grad():
        s, t = (
            student(**{k: b[k] for k in ("input_ids", "attention_mask")}).logits,
            teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
        )
    real = [(0, i) for i in range(5)] + [(1, i) for i in range(3)]  # next-token positions with a real target
    labelled = [(0, 3, 9), (0, 4, 10), (1, 2, 14)]

    def kl(i, j, temp):
        p, q = torch.log_softmax(t[i, j] / temp, -1), torch.log_softmax(s[i, j] / temp, -1)
        return temp * temp * float((p.exp() * (p - q)).sum())

    ce = sum(
        float(torch.nn.functional.cross_entropy(s[i, j][None], torch.tensor([y]))) for i, j, y in labelled
    )
    kl_all = sum(kl(i, j, 2.0) for i, j in real) * len(labelled) / len(real)
    kl_done = sum(kl(i, j, 2.0) for i, j, _ in labelled)
    with torch.no_grad():
        every = TeacherLoss(teacher, 2.0, 0.3, every_token=True)(student, b)
        completion = TeacherLoss(teacher, 2.0, 0.3)(student, b)
    assert float(every) == pytest.approx(0.3 * kl_all + 0.7 * ce, rel=1e-4)
    assert float(completion) == pytest.approx(0.3 * kl_done + 0.7 * ce, rel=1e-4)
    assert abs(kl_all - kl_done) > 1e-3  # the prompt positions do change the KL term
    rows_s = torch.stack([s[i, j] for i, j, _ in labelled])
    rows_t = torch.stack([t[i, j] for i, j, _ in labelled])
    with torch.no_grad():
        top3 = TeacherLoss(teacher, 2.0, 0.3, top_k=3)(student, b)
    assert float(top3) == pytest.approx(0.3 * float(kl_sum(rows_s, rows_t, 2.0, 3)) + 0.7 * ce, rel=1e-4)


def test_kd_hidden_adds_one_minus_cosine_of_the_mapped_layers(tiny_model_dir, tmp_path):
    """--kd-hidden W: W · the mean over real tokens (padding excluded) and student layers of 1 − cos(student
    layer j's output, teacher layer layer_map[j]'s output), as a sum scaled to the labelled count; a student
    that is the teacher's exact copy adds nothing."""
    from transformers import AutoModelForCausalLM

    from slmforge.data.sft_data import IGNORE, Example, collate
    from slmforge.lm.distill import TeacherLoss

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir).float()
    build_student(str(tiny_model_dir), 2, tmp_path / "copy")  # both teacher layers: an exact copy
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "copy").float()
    rows = [
        Example([5, 6, 7, 8, 9, 10], [IGNORE] * 4 + [9, 10]),
        Example([11, 12, 13, 14], [IGNORE] * 3 + [14]),
    ]
    b = collate(rows, pad_id=0)

    def losses():
        with torch.no_grad():
            plain = TeacherLoss(teacher, 1.0, 0.5, every_token=True)(student, b)
            both = TeacherLoss(teacher, 1.0, 0.5, True, hidden=2.0, layer_map=[0, 1])(student, b)
        return float(plain), float(both)

    plain, both = losses()
    assert both == pytest.approx(plain, abs=1e-4)
    with torch.no_grad():
        student.model.layers[1].mlp.down_proj.weight.add_(
            torch.randn_like(student.model.layers[1].mlp.down_proj.weight)
        )
        kw = dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        hs, ht = student(**kw).hidden_states, teacher(**kw).hidden_states
    real = [(0, i) for i in range(6)] + [
        (1, i) for i in range(4)
    ]  # the second row's 2 pad positions excluded
    cos = torch.nn.functional.cosine_similarity
    per_token = [
        sum(1 - float(cos(hs[j + 1][r, i], ht[j + 1][r, i], dim=0)) for j in (0, 1)) / 2 for r, i in real
    ]
    mean = sum(per_token) / len(per_token)
    plain, both = losses()
    assert mean > 0.01 and both - plain == pytest.approx(2.0 * mean * 3, rel=1e-3)  # 3 labelled tokens


@pytest.mark.recipe
def test_kd_hidden_trains_the_students_layers_towards_the_teachers(tiny_tokenizer_dir, sft_file, tmp_path,
                                                                   slm_cli):  # fmt: skip
    """A 2-layer student cut from a 3-layer teacher (layers 0 and 2): --kd-hidden lowers the intermediate-state
    distance more than logit KD alone does; a negative weight, a narrower student and a 1-layer student
    are one-line errors that write nothing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmforge.data.sft_data import collate, load_sft
    from slmforge.lm.distill import _all_logits
    from slmforge.train.losses import hidden_cos_sum

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    teacher = _llama(tok, tmp_path / "teacher", seed=5, hidden=32, layers=3)
    kw = dict(teacher=str(teacher), student_depth=2, data=str(sft_file), max_steps=15, lr=1e-2, alpha=0.5,
              kd_on="all", **FAST)  # fmt: skip
    runs = {w: distill_lm(DistillLMConfig(out=str(tmp_path / f"h{w}"), kd_hidden=w, **kw), progress=False)
            for w in (0.0, 5.0)}  # fmt: skip
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    rows = load_sft(str(sft_file), tok, 128, "skip", "truncate", [im_end])[0][:16]
    b = collate(rows, pad_id=0)
    t = AutoModelForCausalLM.from_pretrained(teacher).float()

    def distance(model_dir) -> float:
        m = AutoModelForCausalLM.from_pretrained(model_dir).float()
        with torch.no_grad():
            hs, ht = _all_logits(m, b, True)[3], _all_logits(t, b, True)[3]
            return float(hidden_cos_sum(hs, ht, [0, 2], b["attention_mask"].bool()))

    start = distance(runs[0.0].student_init)
    logits_only, with_hidden = distance(runs[0.0].model_dir), distance(runs[5.0].model_dir)
    assert with_hidden < 0.8 * min(start, logits_only), (start, logits_only, with_hidden)
    bad = tmp_path / "bad"
    for args, msg in [
        (["--student-depth", "2", "--kd-hidden", "-1"], "--kd-hidden must be 0 (logits only) or a positive"),
        (["--student-depth", "1", "--kd-hidden", "1"], "--kd-hidden needs a student of at least 2 layers"),
    ]:
        code, _, err = slm_cli("distill", str(teacher), "--data", str(sft_file), "--out", str(bad), *args)
        assert code != 0 and msg in err and "Traceback" not in err and not bad.exists(), err
    narrow = _llama(tok, tmp_path / "narrow", seed=6, hidden=16, layers=2)
    code, _, err = slm_cli("distill", str(teacher), "--student", str(narrow), "--data", str(sft_file),
                           "--kd-hidden", "1", "--out", str(bad))  # fmt: skip
    assert code != 0 and "the teacher's hidden size (32), not 16" in err and not bad.exists(), err


@pytest.mark.recipe
def test_cli_kd_on_all_trains_and_bad_kd_on_is_one_line(tiny_model_dir, same_tok_student, sft_file, tmp_path,
                                                        slm_cli):  # fmt: skip
    out = tmp_path / "kd-all"
    r = distill_lm(
        DistillLMConfig(teacher=str(tiny_model_dir), student=str(same_tok_student), data=str(sft_file),
                        out=str(out), max_steps=25, lr=1e-2, alpha=0.9, kd_on="all", **FAST),
        progress=False,
    )  # fmt: skip
    assert r.kl_after < 0.9 * r.kl_before, (r.kl_before, r.kl_after)  # measured on the completion tokens
    code, _, err = slm_cli("distill", str(tiny_model_dir), "--student", str(same_tok_student), "--data",
                           str(sft_file), "--kd-on", "prompt", "--out", str(tmp_path / "bad"))  # fmt: skip
    assert code != 0 and "--kd-on must be one of completion, all" in err
    assert "Traceback" not in err and not (tmp_path / "bad").exists()
    code, _, err = slm_cli("distill", str(tiny_model_dir), "--student", str(same_tok_student), "--data",
                           str(sft_file), "--kd-top-k", "-1", "--out", str(tmp_path / "bad"))  # fmt: skip
    assert code != 0 and "--kd-top-k must be 0 (the whole vocabulary) or a positive count" in err
    assert "Traceback" not in err and not (tmp_path / "bad").exists()


@pytest.mark.recipe
def test_mismatched_tokenizers_name_sequence_level_distillation(tiny_model_dir, other_tok_student, sft_file,
                                                                tmp_path):  # fmt: skip
    out = tmp_path / "kd"
    cfg = DistillLMConfig(teacher=str(tiny_model_dir), student=str(other_tok_student), data=str(sft_file),
                          out=str(out))  # fmt: skip
    with pytest.raises(SlmError, match=r"tokenizer.*--method sequence") as e:
        distill_lm(cfg, progress=False)
    assert "\n" not in str(e.value) and " vs 300 tokens" in str(e.value)
    assert not out.exists()


@pytest.mark.recipe
def test_sequence_level_trains_on_the_teachers_completions(
    tiny_model_dir, other_tok_student, sft_file, tmp_path
):
    from slmforge.infer.engines import open_lm
    from slmforge.infer.generate import GenerateConfig, complete, prompt_ids

    out = tmp_path / "seq"
    r = distill_lm(
        DistillLMConfig(teacher=str(tiny_model_dir), student=str(other_tok_student), data=str(sft_file),
                        out=str(out), method="sequence", teacher_backend="torch", max_new_tokens=8, max_steps=4,
                        **FAST),
        progress=False,
    )  # fmt: skip
    rows = [json.loads(line) for line in (out / "teacher.jsonl").read_text().splitlines()]
    source = [json.loads(line) for line in sft_file.read_text().splitlines()]
    assert r.completions == len(rows) and len(rows) + r.skipped_empty == len(source) and len(rows) > 30
    assert {row["prompt"] for row in rows} <= {s["prompt"] for s in source}
    # each completion is the teacher's greedy reply to the prompt
    lm = open_lm(str(tiny_model_dir), "torch")
    gen = GenerateConfig(model=str(tiny_model_dir), max_new_tokens=8)
    for row in rows[:3]:
        ids = prompt_ids(lm.tokenizer, [{"role": "user", "content": row["prompt"]}])
        assert complete(lm.step(), lm.tokenizer, ids, gen, lm.eos).text.strip() == row["completion"]
    assert rows[0]["completion"] != next(s for s in source if s["prompt"] == rows[0]["prompt"])["completion"]
    # the student (another tokenizer) trained on them; no KL across tokenizers
    assert r.steps == 4 and r.kl_before is None and Path(r.model_dir, "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["data"] == str(out / "teacher.jsonl")


def test_student_depth_cuts_a_student_from_the_teacher(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    assert (
        layer_indices(12, 4) == [0, 4, 7, 11]
        and layer_indices(2, 1) == [0]
        and layer_indices(3, 3) == [0, 1, 2]
    )
    info = build_student(str(tiny_model_dir), 1, tmp_path / "student")
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.num_hidden_layers == 1 and info["layers"] == [0] and not info["not_copied"]
    assert student.config.hidden_size == teacher.config.hidden_size == 64
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    t0, s0 = teacher.model.layers[0].mlp.up_proj.weight, student.model.layers[0].mlp.up_proj.weight
    assert torch.equal(s0, t0)
    assert (tmp_path / "student" / "tokenizer.json").read_bytes() == (
        tiny_model_dir / "tokenizer.json"
    ).read_bytes()
    with pytest.raises(SlmError, match="between 1 and the teacher's 2 layers"):
        build_student(str(tiny_model_dir), 3, tmp_path / "too-deep")
    assert not (tmp_path / "too-deep").exists()


@pytest.mark.recipe
def test_cli_distills_a_causal_lm_into_a_student_depth_student(tiny_model_dir, sft_file, tmp_path, slm_cli):
    out = tmp_path / "run"
    code, stdout, err = slm_cli("distill", "--teacher", tiny_model_dir, "--student-depth", "1", "--data", sft_file,
                                "--out", out, "--epochs", "1", "--batch-size", "8", "--seq-len", "128",
                                "--lr", "3e-3", "--alpha", "1", "--threads", "1", "--seed", "3")  # fmt: skip
    assert code == 0, err
    assert "KL to the teacher" in stdout and "1 layers" in stdout
    assert json.loads((out / "distill_config.json").read_text())["seed"] == 3
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1 and saved["hidden_size"] == 64
    result = json.loads((out / "distill.json").read_text())
    assert result["kl_after"] < result["kl_before"] and (out / "student-init" / "student.json").exists()


@pytest.mark.recipe
def test_cli_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, other_tok_student, sft_file, tmp_path,
                                                      slm_cli):  # fmt: skip
    out = tmp_path / "run"
    code, _, err = slm_cli("distill", "--teacher", tiny_model_dir, "--student", other_tok_student,
                           "--data", sft_file, "--out", out)  # fmt: skip
    assert code == 2 and "--method sequence" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = slm_cli(
        "distill", tiny_model_dir, "--student-depth", "5", "--data", sft_file, "--out", out
    )
    assert code == 2 and "between 1 and the teacher's 2 layers" in err and not out.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    code, _, err = slm_cli("distill", tiny_model_dir, "--student-depth", "1", "--data", bad, "--out", out)
    assert code == 2 and "line 2" in err and not out.exists()
    tools = Path(__file__).resolve().parents[2] / "examples" / "tools" / "train.jsonl"
    code, _, err = slm_cli("distill", tiny_model_dir, "--student-depth", "1", "--method", "sequence",
                           "--data", tools, "--out", out)  # fmt: skip
    assert code == 2 and "line 1 has tools" in err and "--method logit" in err and not out.exists()


@pytest.mark.recipe
def test_cli_sends_classifier_teachers_to_the_encoder_path(tmp_path, slm_cli, monkeypatch):
    import slmforge.clf.compress

    seen = {}

    def fake_distill(cfg):
        seen["cfg"] = cfg
        return {"out": cfg.out, "params": 1, "params_vs_teacher": 0.5, "layers": 1, "vocab_size": 10,
                "val_accuracy": 1.0, "teacher_val_accuracy": 1.0, "best_epoch": 1, "epochs_run": 1,
                "train_seconds": 0}  # fmt: skip

    monkeypatch.setattr(slmforge.clf.compress, "distill", fake_distill)
    clf = tmp_path / "clf"
    clf.mkdir()
    (clf / "classifier.json").write_text("{}")
    (clf / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    code, _, err = slm_cli("distill", clf, "--data", "train.csv", "--out", tmp_path / "d")
    assert code == 0, err
    cfg = seen["cfg"]
    assert (cfg.student, cfg.epochs, cfg.lr, cfg.temperature, cfg.alpha) == ("minilm-l6", 3, 1e-4, 2.0, 0.5)
    code, _, err = slm_cli(
        "distill", clf, "--data", "train.csv", "--out", tmp_path / "d", "--student-depth", "2"
    )
    assert code == 2 and "classifier" in err


@pytest.mark.recipe
def test_an_interrupted_distillation_resumes_with_the_same_losses(
    tiny_model_dir, sft_file, tmp_path, monkeypatch
):
    from slmforge.train import telemetry

    def losses(run):
        return {json.loads(ln)["step"]: json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").open()}

    kw = dict(student_depth=1, data=str(sft_file), max_steps=6, lr=3e-3, seq_len=128, batch_size=4, threads=1,
              checkpoint_every=2)  # fmt: skip
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    distill_lm(DistillLMConfig(teacher=str(tiny_model_dir), out=str(straight), **kw), progress=False)
    real_step = telemetry.StepLogger.step

    def crash_after_5(self, step, *args):
        real_step(self, step, *args)
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(telemetry.StepLogger, "step", crash_after_5)
    with pytest.raises(KeyboardInterrupt):
        distill_lm(DistillLMConfig(teacher=str(tiny_model_dir), out=str(crashed), **kw), progress=False)
    monkeypatch.setattr(telemetry.StepLogger, "step", real_step)
    assert (crashed / "ckpt").is_dir() and not (crashed / "model").exists()
    with pytest.raises(SlmError, match="different config.*alpha"):
        distill_lm(DistillLMConfig(str(tiny_model_dir), str(sft_file), str(crashed), alpha=0.2, resume=True))
    distill_lm(DistillLMConfig(str(tiny_model_dir), str(sft_file), str(crashed), resume=True), progress=False)
    a, b = losses(straight), losses(crashed)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(a[s] - b[s]) <= 1e-5 for s in a), (a, b)


def test_run_dirs_stand_for_their_models(tmp_path):
    from slmforge.lm.distill import DistillLMConfig, _run_dirs_to_models

    (tmp_path / "full" / "model").mkdir(parents=True)
    (tmp_path / "full" / "model" / "config.json").write_text("{}")
    cfg = _run_dirs_to_models(
        DistillLMConfig(teacher=str(tmp_path / "full"), data="d", out="o", student="hub/id")
    )
    assert cfg.teacher == str(tmp_path / "full" / "model") and cfg.student == "hub/id"


@pytest.mark.recipe
def test_student_from_cuts_the_student_from_another_model_and_checks_it(
    tiny_model_dir, same_tok_student, other_tok_student, sft_file, tmp_path, slm_cli
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = _llama(
        AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "base", seed=5, hidden=64, layers=3
    )
    out = tmp_path / "run"
    code, stdout, err = slm_cli("distill", tiny_model_dir, "--student-depth", "2", "--student-from", base,
                                "--data", sft_file, "--out", out, "--epochs", "1", "--seq-len", "128",
                                "--threads", "1")  # fmt: skip
    assert code == 0, err
    init = AutoModelForCausalLM.from_pretrained(out / "student-init")
    source, teacher = (AutoModelForCausalLM.from_pretrained(p) for p in (base, tiny_model_dir))
    assert json.loads((out / "student-init" / "student.json").read_text())["layers"] == [0, 2]
    s1, b2 = init.model.layers[1].self_attn.q_proj.weight, source.model.layers[2].self_attn.q_proj.weight
    assert torch.equal(s1, b2)
    emb = init.get_input_embeddings().weight
    assert torch.equal(emb, source.get_input_embeddings().weight)
    assert not torch.equal(emb, teacher.get_input_embeddings().weight)
    assert (out / "model" / "model.safetensors").exists()

    for args, cause in [
        (["--student", same_tok_student, "--student-from", base], "add --student-depth"),
        (["--student-depth", "1", "--student-from", other_tok_student], "need one tokenizer"),
        (["--student-depth", "1", "--student-from", same_tok_student], "hidden size 32, the teacher 64"),
        (["--student-depth", "4", "--student-from", base], f"between 1 and {base}'s 3 layers"),
    ]:
        bad = tmp_path / "bad"
        code, _, err = slm_cli("distill", tiny_model_dir, *args, "--data", sft_file, "--out", bad)
        assert code == 2 and cause in err and len(err.strip().splitlines()) == 1, err
        assert not bad.exists()
