"""slm eval for causal LMs: label log-likelihood, few-shot prompts, reports, same greedy output
as `slm generate`, bad input."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import torch

from slmforge.core.errors import SlmError
from slmforge.lm.eval_data import Item, build_messages, prepare_jobs
from slmforge.lm.evaluate import answer_ids, label_logprobs
from slmforge.ship.evaluate import EvalConfig, evaluate

PROMPTS = ["The cat sees", "My friend reads", "A young girl walks to the sea", "héllo 🙂"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(model_dir, data, **kw) -> EvalConfig:
    kw.setdefault("task", "generation")
    kw.setdefault("isolate", False)
    kw.setdefault("threads", 1)
    return EvalConfig(models=[str(model_dir)], data=[str(data)], **kw)


# ---------------------------------------------------------------- prompts


def test_shots_build_the_expected_conversation(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(6)])
    labels = tmp_path / "labels.txt"
    labels.write_text("a1\na2\n")
    cfg = EvalConfig(
        models=["m"], data=[str(data)], task="generation", shots=2, shots_from=str(data), limit=2, seed=3,
        instruction="Name the answer.", labels_from=str(labels),
    )  # fmt: skip
    job = prepare_jobs(cfg)[0]
    assert len(job["messages"]) == 2
    evaluated = {f"q{ln - 1}" for ln in job["lines"]}
    msgs = job["messages"][0]
    assert msgs[0] == {
        "role": "system",
        "content": "Name the answer.\nAnswer with exactly one of these labels: a1, a2",
    }
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user", "assistant", "user"]
    shots = [m["content"] for m in msgs[1:5]]
    assert all(shots[i + 1] == "a" + shots[i][1:] for i in (0, 2))  # each shot is a row's prompt and answer
    assert not evaluated & {shots[0], shots[2]}  # shots never include the items under evaluation
    assert msgs[-1] == {"role": "user", "content": f"q{job['lines'][0] - 1}"}
    assert job["messages"][1][:-1] == msgs[:-1]  # the same shots for every item
    assert prepare_jobs(cfg)[0]["messages"] == job["messages"]  # seeded


def test_per_model_shots_suffix_puts_a_few_shot_baseline_in_the_same_table(tiny_model_dir, tmp_path):
    from slmforge.lm.eval_data import split_shots

    assert split_shots("qwen@5shot", 0) == ("qwen", 5) and split_shots("m@0-shots", 3) == ("m", 0)
    assert split_shots("plain", 2) == ("plain", 2) and split_shots("a@b", 1) == ("a@b", 1)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(6)))
    cfg = _cfg(tiny_model_dir, data, shots_from=str(data), limit=2, max_new_tokens=2, latency_items=1)
    cfg.models = [str(tiny_model_dir), f"{tiny_model_dir}@2shot"]
    rows = evaluate(cfg, False)
    assert [(r["model"], r["shots"], r["items"]) for r in rows] == [
        (str(tiny_model_dir), 0, 2),
        (str(tiny_model_dir), 2, 2),
    ]


def test_build_messages_merges_the_rows_own_system_prompt():
    item = Item([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "hello")
    shot = Item([{"role": "user", "content": "yo"}], "hey")
    assert build_messages(item, [shot], "labels: x") == [
        {"role": "system", "content": "labels: x\n\nbe brief"},
        {"role": "user", "content": "yo"},
        {"role": "assistant", "content": "hey"},
        {"role": "user", "content": "hi"},
    ]


# ---------------------------------------------------------------- label log-likelihood


def _direct_logprob(model, prompt: list[int], answer: list[int]) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0].float(), -1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(answer))


def test_label_log_likelihood_picks_the_label_the_model_prefers(tiny_model_dir, tmp_path):
    from slmforge.infer.generate import prompt_ids
    from slmforge.infer.model_dirs import load

    model, tok = load(str(tiny_model_dir))
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    labels = ["red house", "blue sky", "a cup of tea", "sun"]  # answers of different token lengths
    texts = ["The cat sees", "My friend reads", "The old man paints", "Every student writes about"]
    system = "Answer with exactly one of these labels: " + ", ".join(labels)
    preferred = []
    for text in texts:
        prompt = prompt_ids(tok, [{"role": "system", "content": system}, {"role": "user", "content": text}])
        answers = [answer_ids(tok, lab, True, eos) for lab in labels]
        assert all(a[-1] == eos[0] for a in answers)  # the end-of-turn token is scored too
        direct = [_direct_logprob(model, prompt, a) for a in answers]
        assert label_logprobs(model, prompt, answers, pack=8) == pytest.approx(direct, abs=1e-4)
        preferred.append(labels[max(range(len(labels)), key=direct.__getitem__)])
    # a data set whose answers are what the model prefers scores 1.0; shifted answers score 0.0
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": t, "label": p} for t, p in zip(texts, preferred)])
    label_file = tmp_path / "labels.json"
    label_file.write_text(json.dumps(labels))
    rows = evaluate(_cfg(tiny_model_dir, data, task="classification", labels_from=str(label_file)), False)
    assert rows[0]["accuracy"] == 1.0 and rows[0]["backend"] == "torch"
    assert [p["prediction"] for p in rows[0]["predictions"]] == preferred
    mc = [
        {"prompt": t, "choices": labels, "answer": (labels.index(p) + 1) % 4}
        for t, p in zip(texts, preferred)
    ]
    rows = evaluate(_cfg(tiny_model_dir, _jsonl(tmp_path / "mc.jsonl", mc), task="multiple-choice"), False)
    assert rows[0]["accuracy"] == 0.0 and rows[0]["items"] == 4


def test_constrained_classification_generates_a_label_for_every_item(slm_cli, tiny_model_dir, tmp_path):
    from slmforge.infer.constrain import Constraint
    from slmforge.infer.engines import open_lm
    from slmforge.infer.generate import GenerateConfig, complete, prompt_ids

    labels = ["red house", "blue sky", "a cup of tea", "sun"]
    texts = ["The cat sees", "My friend reads", "The old man paints", "Every student writes about"]
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": t, "label": labels[i]} for i, t in enumerate(texts)])
    label_file = tmp_path / "labels.json"
    label_file.write_text(json.dumps(labels))
    cfg = _cfg(tiny_model_dir, data, task="classification", labels_from=str(label_file), constrain=True)
    for backend in ("torch", "ort"):
        row = evaluate(replace(cfg, backend=backend, precision="fp32"), False)[0]
        assert row["backend"] == backend and row["constrained"] and row["cut_short"] == 0
        preds = [p["prediction"] for p in row["predictions"]]
        assert set(preds) <= set(labels)
        assert row["accuracy"] == sum(p == lab for p, lab in zip(preds, labels)) / 4
    # the predictions are `complete` under the same choice constraint: what `slm generate --choice` gives
    lm = open_lm(str(tiny_model_dir), "torch")
    system = "Answer with exactly one of these labels: " + ", ".join(labels)
    gen = GenerateConfig(model="tiny", max_new_tokens=32)
    for text, pred in zip(texts, preds):
        ids = prompt_ids(
            lm.tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": text}]
        )
        assert (
            complete(lm.step(), lm.tokenizer, ids, gen, lm.eos, None, Constraint.choice(labels)).text == pred
        )
    code, out, err = slm_cli(
        "eval", tiny_model_dir, "--task", "classification", "--data", data, "--labels-from", label_file,
        "--constrain", "--threads", "1", "--no-isolate",
    )  # fmt: skip
    assert code == 0 and "accuracy" in out, err
    code, out, err = slm_cli("eval", tiny_model_dir, "--task", "generation", "--data", data, "--constrain")
    assert code == 2 and "--constrain is for --task classification" in err


# ---------------------------------------------------------------- reports, same output as slm generate


def test_reports_hold_the_table_and_slm_generate_s_greedy_output(slm_cli, tiny_model_dir, tmp_path):
    from slmforge.infer.generate import GenerateConfig, generate_completion

    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": p, "completion": "the blue sky"} for p in PROMPTS])
    out = tmp_path / "report"
    code, stdout, err = slm_cli(
        "eval", tiny_model_dir, "--task", "generation", "--data", data, "--max-new-tokens", "12",
        "--threads", "1", "--out", out, "--price-per-hour", "0.5", "--latency-items", "3",
    )  # fmt: skip
    assert code == 0, err
    assert "EM" in stdout and "ROUGE-L" in stdout and "$/1k req" in stdout
    report = json.loads((out / "eval.json").read_text())
    (row,) = report["rows"]
    assert report["task"] == "generation" and row["items"] == 4 and row["latency_items"] == 3
    for key in ("exact_match", "token_f1", "rouge_l", "chrf", "p50_s", "p95_s", "tokens_per_s", "params",
                "disk_mb", "peak_rss_mb", "cost_per_1k"):  # fmt: skip
        assert row[key] is not None, key
    assert row["peak_rss_mb"] > 50  # a fresh process per model (isolate is the default)
    assert row["cost_per_1k"] == pytest.approx(row["seconds"] / 4 / 3600 * 0.5 * 1000)
    assert row["params"] == sum(p.numel() for p in _torch_model(tiny_model_dir).parameters())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert row["token_f1"] == pytest.approx(sum(p["token_f1"] for p in preds) / 4)
    md = (out / "eval.md").read_text()
    assert "| model | backend |" in md and f"{row['chrf']:.3f}" in md
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for p in preds:  # the same engine and decode loop as `slm generate`
        cfg = GenerateConfig(model=str(tiny_model_dir), prompt=p["prompt"], max_new_tokens=12, threads=1)
        assert p["prediction"] == generate_completion(cfg).text, p["prompt"]
    assert row["backend"] == "ort"  # the fast runtime by default, as in `slm generate`


def _torch_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def test_torch_backend_and_csv_columns(tiny_model_dir, tmp_path):
    from slmforge.infer.generate import GenerateConfig, generate_completion

    data = tmp_path / "d.csv"
    data.write_text("text,category\n" + "".join(f"{p},card_arrival\n" for p in PROMPTS[:3]))
    rows = evaluate(_cfg(tiny_model_dir, data, backend="torch", max_new_tokens=6), False)
    assert rows[0]["backend"] == "torch" and rows[0]["latency_items"] == 3  # unbatched: every item is timed
    for p in rows[0]["predictions"]:
        cfg = GenerateConfig(model=str(tiny_model_dir), prompt=p["prompt"], max_new_tokens=6, backend="torch")
        assert p["prediction"] == generate_completion(cfg).text


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "content, kw, message",
    [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n', {}, r"d\.jsonl:2: not valid JSON"),
        ('{"prompt": "a"}\n', {}, r"d\.jsonl:1: needs 'prompt' and 'completion'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}\n', {}, "no final assistant turn"),
        ("\n\n", {}, "holds no examples"),
        ('{"prompt": "a", "completion": "b"}\n', {"task": "bleu"}, "unknown task"),
        ('{"prompt": "a", "completion": "b"}\n', {"shots": 2}, "--shots needs --shots-from"),
        ('{"prompt": "a", "completion": "b"}\n', {"task": "multiple-choice"}, "need 'choices'"),
        ('{"prompt": "a", "choices": ["x"], "answer": 3}\n', {}, "out of range"),
    ],
)
def test_bad_jsonl_and_flags(content, kw, message, tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(content)
    with pytest.raises(SlmError, match=message):
        evaluate(_cfg(tiny_model_dir, data, **kw), False)


def test_bad_csv_and_shots(tiny_model_dir, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,category\nhello,greet\n")
    with pytest.raises(
        SlmError, match=r"d\.csv has no column 'intent' \(columns: text, category\); pass --label-col"
    ):
        evaluate(_cfg(tiny_model_dir, data, label_col="intent"), False)
    with pytest.raises(SlmError, match="more examples than --shots-from holds"):
        evaluate(_cfg(tiny_model_dir, data, shots=3, shots_from=str(data)), False)


def test_cli_errors_are_one_line(slm_cli, tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    code, _, err = slm_cli("eval", tiny_model_dir, "--task", "generation", "--data", data, "--shots", "1")
    assert code == 2 and err.count("\n") == 1 and "--shots needs --shots-from" in err
    assert not (tmp_path / "report").exists()


def test_run_dirs_and_adapters_count_as_causal_lms(tmp_path, tiny_model_dir):
    from slmforge.lm.evaluate import is_causal_lm

    (tmp_path / "full" / "model").mkdir(parents=True)
    (tmp_path / "full" / "model" / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"]})
    )
    (tmp_path / "lora" / "adapter").mkdir(parents=True)
    (tmp_path / "lora" / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    assert is_causal_lm(str(tmp_path / "full")) and is_causal_lm(str(tmp_path / "lora"))
    assert is_causal_lm(str(tiny_model_dir)) and is_causal_lm(f"{tiny_model_dir}@5shot")
    assert not is_causal_lm(str(tmp_path / "enc"))


def test_the_isolated_evaluation_child_exits_when_its_parent_is_killed(tmp_path):
    """A plain `kill` of `slm eval` reaches only the parent; its spawned evaluation child must not live on."""
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import multiprocessing, threading, time\n"
        "from slmforge.lm.evaluate import _in_fresh_process\n"
        "def report():\n"
        "    while not multiprocessing.active_children(): time.sleep(0.1)\n"
        "    print(multiprocessing.active_children()[0].pid, flush=True)\n"
        "threading.Thread(target=report, daemon=True).start()\n"
        "_in_fresh_process(time.sleep, 120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.0)  # the child is up and sleeping
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 15
        while _alive(child) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(child), "the evaluation child outlived its killed parent"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] not in "ZX"  # a zombie has exited
    except FileNotFoundError:
        return False
