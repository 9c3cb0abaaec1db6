"""Offline evaluation of causal LMs on your own data: quality next to latency, memory and cost.

Tasks (called through `slmforge.ship.evaluate.evaluate`, one row per model and data file):

- `generation`: each prompt is answered greedily (up to `max_new_tokens`) through
  `slmforge.infer.engines.open_lm` and `slmforge.infer.generate.complete_batch`, the engine and decode loop of
  `slm generate` and the server, so the scored outputs are the ones users get. Each answer is scored
  against its reference by exact match, token F1, ROUGE-L and sentence chrF (`slmforge.lm.text_metrics`),
  and the row holds their means, plus sacrebleu's corpus chrF over all items (`chrf_corpus`).
- `classification` / `multiple-choice`: nothing is generated; every candidate answer is scored by its
  total log-probability given the prompt, and the most likely one is the prediction (accuracy). The
  candidate is scored as the assistant's reply *including its end-of-turn token*, so a label that is a
  prefix of another ("card" vs "card_arrival") does not win by being short. Classification candidates are
  `labels_from` (else every label in the data); multiple-choice rows carry their own `choices`. These
  need full-sequence logits, so they run on the torch model (fp32) whatever `backend` says.
- `classification` with `constrain`: each answer is generated greedily on `backend`, as `generation`
  does, under a choice constraint over the candidate labels (`slmforge.infer.constrain`), so every reply is
  a label; accuracy is its exact match with the reference: what a program calling `slm generate --choice`
  gets. Unlike label scoring it commits token by token (a label's first tokens decide).

Data formats, shots and prompts: `slmforge.lm.eval_data`; the table, eval.md, eval.json and eval.png:
`slmforge.lm.eval_report`.

Speed and cost, per model:
- p50 / p95 latency: seconds per item with one request at a time (`complete`, no batching), on the first
  `latency_items` items; on backends that do not batch, every item already ran alone and all are used.
  A batch's wall time divided by its rows is throughput, not latency, and is never reported as such.
  Label scoring runs items one at a time, each timed; the prompt prefix every item shares (system
  prompt, shots) runs once and its KV cache is reused, as a server with prefix caching would.
- items/s and generated tokens/s: from the (batched) run over all items.
- cost per 1,000 requests: (batched seconds per item / 3600) x `price_per_hour` x 1000: the machine time
  a request costs when the machine is kept busy.
- peak memory: `ru_maxrss` of a fresh process that loads and runs only this model (`isolate`, the
  default), so it includes Python, torch and the runtime: what serving it with this stack takes. Without
  `isolate` it is the current process's high-water mark, an upper bound.
- params: counted from the model's weights (safetensors headers); disk: the bytes of the artifact that
  ran (the converted int8 ONNX model on `ort`, the GGUF file on llama.cpp, the model dir on torch).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError
from slmforge.lm.eval_data import prepare_jobs, split_shots
from slmforge.lm.eval_report import short_name
from slmforge.lm.text_metrics import corpus_chrf, score_generation

# ---------------------------------------------------------------- one model


def evaluate_model(model: str, task: str, jobs: list[dict], opts: dict, progress: bool = True) -> list[dict]:
    """Evaluate one model on prepared jobs (`data`, `messages`, `references`, `choices`); one row per job.

    Runs in a fresh process when isolated, so peak memory is this model's alone (see the module doc).
    """
    import resource

    from slmforge.infer.engines import open_lm

    t0 = time.perf_counter()
    generates = task == "generation" or opts.get("constrain")
    backend = opts["backend"] if generates else "torch"
    lm = open_lm(model, backend, opts["precision"], opts["threads"], opts["device"])
    load_seconds = time.perf_counter() - t0
    size = {"params": param_count(lm), "disk_mb": lm_disk_mb(lm)}
    rows = []
    for job in jobs:
        if task == "generation":
            row = _generate_job(lm, model, job, opts, progress)
        elif opts.get("constrain"):
            row = _constrained_choice_job(lm, model, job, opts, progress)
        else:
            row = _choice_job(lm, model, job, opts, progress)
        seconds_per_item = row["seconds"] / max(row["items"], 1)
        row |= {
            "load_seconds": load_seconds,
            **size,
            "cost_per_1k": seconds_per_item / 3600 * opts["price_per_hour"] * 1000,
            "price_per_hour": opts["price_per_hour"],
        }
        rows.append(row)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    for row in rows:
        row["peak_rss_mb"] = peak
    return rows


def _generate_job(lm, model: str, job: dict, opts: dict, progress: bool) -> dict:
    done, seconds, latency = _decode_items(lm, model, job, opts, progress)
    refs = job["references"]
    scores = [score_generation(c.text, r) for c, r in zip(done, refs)]
    tokens = sum(len(c.token_ids) for c in done)
    row = _row(model, job, "generation", lm, seconds, latency)
    row |= {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    row["chrf_corpus"] = corpus_chrf([c.text for c in done], refs)
    row |= {
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "generated_tokens_mean": tokens / len(done),
        "eos_rate": float(np.mean([c.stopped_at_eos for c in done])),
        "max_new_tokens": opts["max_new_tokens"],
    }
    row["predictions"] = [
        {"line": ln, "prompt": q, "reference": r, "prediction": c.text, **s}
        for ln, q, r, c, s in zip(job["lines"], job["prompts"], refs, done, scores)
    ]
    return row


def _constrained_choice_job(lm, model: str, job: dict, opts: dict, progress: bool) -> dict:
    from slmforge.infer.constrain import Constraint

    labels = job["choices"][0]
    done, seconds, latency = _decode_items(lm, model, job, opts, progress, Constraint.choice(labels))
    refs = job["references"]
    preds = [c.text if c.constraint_satisfied else "" for c in done]  # cut short: no label, wrong
    correct = [float(p == r) for p, r in zip(preds, refs)]
    row = _row(model, job, job["task"], lm, seconds, latency)
    row |= {"accuracy": float(np.mean(correct)), "constrained": True}
    row["cut_short"] = sum(not c.constraint_satisfied for c in done)
    row["predictions"] = [
        {"line": ln, "prompt": q, "reference": r, "prediction": p, "correct": c}
        for ln, q, r, p, c in zip(job["lines"], job["prompts"], refs, preds, correct)
    ]
    return row


def _decode_items(lm, model: str, job: dict, opts: dict, progress: bool, constraint=None):
    """Every item answered greedily (batched where the backend batches): (completions, seconds, latencies)."""
    from slmforge.core.progress import bar
    from slmforge.infer.generate import GenerateConfig, complete, complete_batch, prompt_ids

    cfg = GenerateConfig(model=model, max_new_tokens=opts["max_new_tokens"], chat=opts["chat"])
    prompts = [prompt_ids(lm.tokenizer, m, chat=opts["chat"]) for m in job["messages"]]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # equal lengths batch together
    done = [None] * len(prompts)
    step = opts["batch_size"]
    started = time.perf_counter()
    with bar(f"{short_name(model)} generate", total=len(prompts), enabled=progress) as b:
        for s in range(0, len(order), step):
            chunk = order[s : s + step]
            batch = complete_batch(
                lm, [prompts[i] for i in chunk], cfg, max_batch=step, constraint=constraint
            )
            for i, c in zip(chunk, batch):
                done[i] = c
            b.advance(len(chunk))
            elapsed = time.perf_counter() - started
            b.update(rate=f"{sum(len(done[i].token_ids) for i in order[: s + step]) / elapsed:.1f} tok/s")
    seconds = time.perf_counter() - started
    if lm.backend == "ort":  # rows may have shared a batch: time single requests apart
        n = min(opts["latency_items"], len(prompts))
        with bar(f"{short_name(model)} latency", total=n, enabled=progress) as b:
            latency = []
            for p in prompts[:n]:
                latency.append(complete(lm.step(), lm.tokenizer, p, cfg, lm.eos, None, constraint).seconds)
                b.advance()
    else:
        latency = [c.seconds for c in done]
    return done, seconds, latency


def _choice_job(lm, model: str, job: dict, opts: dict, progress: bool) -> dict:
    import copy

    import torch

    from slmforge.core.progress import bar
    from slmforge.infer.engines import cache_of
    from slmforge.infer.generate import prompt_ids

    tok, chat, net = lm.tokenizer, opts["chat"], lm.torch_model
    known: dict[str, list[int]] = {}
    prompts = [prompt_ids(tok, m, chat=chat) for m in job["messages"]]
    shared = _shared_prefix(prompts)  # system prompt and shots: run once, reused by every item
    started = time.perf_counter()
    prefix = None
    if shared:
        with torch.inference_mode():
            x = torch.tensor([prompts[0][:shared]], device=next(net.parameters()).device)
            prefix = cache_of(net(input_ids=x, use_cache=True))
    preds, latency = [], []
    with bar(f"{short_name(model)} score labels", total=len(prompts), enabled=progress) as b:
        for ids, choices in zip(prompts, job["choices"]):
            t = time.perf_counter()
            for c in choices:
                if c not in known:
                    known[c] = answer_ids(tok, c, chat, lm.eos)
            cached = (copy.deepcopy(prefix), shared) if prefix is not None else None
            scores = label_logprobs(net, ids, [known[c] for c in choices], cached)
            preds.append(choices[int(np.argmax(scores))])
            latency.append(time.perf_counter() - t)
            b.advance()
    seconds = time.perf_counter() - started
    refs = job["references"]
    correct = [float(p == r) for p, r in zip(preds, refs)]
    row = _row(model, job, job["task"], lm, seconds, latency)
    row["accuracy"] = float(np.mean(correct))
    row["predictions"] = [
        {"line": ln, "prompt": q, "reference": r, "prediction": p, "correct": c}
        for ln, q, r, p, c in zip(job["lines"], job["prompts"], refs, preds, correct)
    ]
    return row


def _row(model: str, job: dict, task: str, lm, seconds: float, latency: list[float]) -> dict:
    n = len(job["messages"])
    return {
        "model": model,
        "data": job["data"],
        "task": task,
        "backend": lm.backend,
        "precision": lm.precision,
        "items": n,
        "shots": job["shots"],
        "seconds": seconds,
        "items_per_s": n / seconds if seconds > 0 else 0.0,
        "p50_s": float(np.percentile(latency, 50)),
        "p95_s": float(np.percentile(latency, 95)),
        "latency_items": len(latency),
    }


def answer_ids(tokenizer, answer: str, chat: bool, eos: list[int]) -> list[int]:
    """Token ids of `answer` as the assistant's reply, through its end-of-turn token.

    With a chat template: the tokens the template puts after the generation prompt for this reply, up to
    and including the first end-of-turn/EOS id. Without: " answer" followed by EOS.
    """
    from slmforge.infer.generate import prompt_ids

    if chat and getattr(tokenizer, "chat_template", None):
        probe = [{"role": "user", "content": "?"}]
        head = prompt_ids(tokenizer, probe, chat=True)
        text = tokenizer.apply_chat_template(
            probe + [{"role": "assistant", "content": answer}], tokenize=False
        )
        full = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if full[: len(head)] == head and len(full) > len(head):
            cont = full[len(head) :]
            ends = [j for j, t in enumerate(cont) if t in eos]
            return cont[: ends[0] + 1] if ends else cont
    return list(tokenizer(" " + answer, add_special_tokens=False)["input_ids"]) + eos[:1]


def label_logprobs(
    model, prompt: list[int], answers: list[list[int]], prefix=None, pack: int = 1024
) -> list[float]:
    """Total log-probability (natural log) of each answer's tokens given `prompt`.

    The prompt runs once (only past `prefix`, a `(cache, length)` of its first tokens, when given; the
    cache is extended, so pass a copy). The answers then run packed into one sequence on top of the
    prompt's KV cache, each seeing the prompt and its own earlier tokens only (a 4D mask and explicit
    positions), so nothing is copied per answer; the cache is cropped back after each pack.
    """
    import torch

    from slmforge.infer.engines import cache_arg, cache_of

    dev = next(model.parameters()).device
    cache, start = prefix if prefix is not None else (None, 0)
    n = len(prompt)
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([prompt[start:]], device=dev), **{cache_arg(model): cache}, use_cache=True
        )
        cache = cache_of(out)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)
        totals = [float(first[a[0]]) for a in answers]
        packs, cur = [], []
        for k, a in enumerate(answers):
            if len(a) > 1:
                if cur and sum(len(answers[i]) - 1 for i in cur) + len(a) - 1 > pack:
                    packs.append(cur)
                    cur = []
                cur.append(k)
        packs += [cur] if cur else []
        for group in packs:
            ids = [t for k in group for t in answers[k][:-1]]
            targets = [t for k in group for t in answers[k][1:]]
            owner = torch.tensor([k for k in group for _ in answers[k][1:]], device=dev)
            pos = torch.tensor([n + j for k in group for j in range(len(answers[k]) - 1)], device=dev)
            q = len(ids)
            sees = (owner[:, None] == owner[None, :]) & torch.ones(q, q, dtype=torch.bool, device=dev).tril()
            sees = torch.cat([torch.ones(q, n, dtype=torch.bool, device=dev), sees], dim=1)
            mask = torch.zeros(1, 1, q, n + q, device=dev).masked_fill(~sees, torch.finfo(torch.float32).min)
            logits = model(
                input_ids=torch.tensor([ids], device=dev),
                position_ids=pos[None],
                attention_mask=mask,
                **{cache_arg(model): cache},
                use_cache=True,
            ).logits[0]
            cache.crop(-q)  # drop the pack again: the next one sees the prompt only
            picked = torch.log_softmax(logits.float(), -1)[torch.arange(q), torch.tensor(targets, device=dev)]
            for k, v in zip(
                group, torch.zeros(max(group) + 1, device=dev).index_add(0, owner, picked)[group]
            ):
                totals[k] += float(v)
    return totals


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix every prompt shares (system prompt and shots), minus one token, so every
    prompt still has a token of its own to run."""
    if not prompts:
        return 0
    first, n = prompts[0], min(len(p) for p in prompts)
    common = next((i for i in range(n) if any(p[i] != first[i] for p in prompts)), n)
    return max(common - 1, 0)


def param_count(lm) -> int | None:
    if lm.torch_model is not None:
        return sum(p.numel() for p in lm.torch_model.parameters())
    path = Path(lm.source)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    return total


def lm_disk_mb(lm) -> float | None:
    target = lm.info.get("model_dir") or lm.info.get("gguf") or lm.source
    path = Path(target) if target else None
    if path is None or not path.exists():
        return None
    return disk_mb(path)


def disk_mb(path: Path) -> float:
    """Megabytes of a file, or of the files under a directory (a `.hf-cache` inside left out)."""
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and ".hf-cache" not in f.parts) / 1e6


# ---------------------------------------------------------------- all models


def evaluate_generative(cfg, progress: bool = True) -> list[dict]:
    """`slm eval --task generation|classification|multiple-choice` for causal LMs: see the module doc.

    `cfg` is a `slmforge.ship.evaluate.EvalConfig`. Prompts are built once and shared by every model.
    """
    jobs = prepare_jobs(cfg)
    opts = {
        "backend": cfg.backend,
        "precision": cfg.precision,
        "threads": cfg.threads,
        "device": cfg.device,
        "chat": cfg.chat,
        "max_new_tokens": cfg.max_new_tokens,
        "batch_size": cfg.gen_batch_size,
        "latency_items": cfg.latency_items,
        "price_per_hour": cfg.price_per_hour,
        "constrain": cfg.constrain,
    }
    specs = [split_shots(m, cfg.shots) for m in cfg.models]
    jobs_for = {cfg.shots: jobs}
    for _, k in specs:
        if k not in jobs_for:
            jobs_for[k] = prepare_jobs(replace(cfg, shots=k))
    rows = []
    for model, k in specs:
        if cfg.isolate:
            rows += _in_fresh_process(evaluate_model, model, cfg.task, jobs_for[k], opts, progress)
        else:
            rows += evaluate_model(model, cfg.task, jobs_for[k], opts, progress)
    return rows


def _in_fresh_process(fn, *args):
    """Run `fn(*args)` in a new interpreter (spawn), so its `ru_maxrss` is its own."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(1, ctx, initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise SlmError(f"evaluating {args[0]} crashed its process (out of memory?)") from None


def _exit_with_parent(parent: int) -> None:
    """In an evaluation child: exit when the parent dies (a plain `kill` of `slm eval` reaches only it),
    also if it died while this child was still starting."""
    import os
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def is_causal_lm(model: str) -> bool:
    """Whether `model` names a text-generation model (catalog kind, GGUF file, or *ForCausalLM config)."""
    from slmforge.core import hub

    model = split_shots(model, 0)[0]
    entry = hub.CATALOG.get(model)
    if entry is not None:
        return entry.kind == "causal-lm"
    from slmforge.infer.model_dirs import output_dir

    path = output_dir(Path(model).expanduser())  # a finetune/distill run dir → its model/ or adapter/
    if path.is_file():
        return path.suffix == ".gguf"
    if (path / "adapter_config.json").exists():
        return True  # a PEFT adapter of a causal LM (slm finetune --method lora|prompt-tuning)
    cfg = path / "config.json"
    if not cfg.exists():
        return not path.exists()  # a hub id: assume a causal LM
    archs = json.loads(cfg.read_text()).get("architectures") or []
    return any(a.endswith("ForCausalLM") for a in archs)
