"""slmforge's int4 GPTQ (`slmforge/infer/gptq.py`) against ONNX Runtime's own weight-only quantiser
(`onnxruntime.quantization.matmul_nbits_quantizer`), side by side on SmolLM2-135M-Instruct, in one run.

    nice -n 0 python benchmarks/gptq_vs_ort.py [--model smollm2-135m-instruct] [--threads 2]
        [--windows 24] [--calib-seqs 32] [--ort-gptq-seqs 2] [--new-tokens 64] [--reps 3]
        [--methods ours ort-default ort-kquant ort-hqq ort-gptq [ours-equal]] [--md OUT.md] [--json OUT.json]

Every row is an ONNX Runtime GenAI model of the same source, in asymmetric 4-bit `MatMulNBits` blocks of 32 with
accuracy level 4 (int8 activations, what the model builder writes for the CPU), gate and up projections fused
(`onnx_graph.fuse_shared_input_matmuls`) and the head reading the last position only, so the rows differ only in
how the weights were quantised:
- ours: `slm quantize --scheme int4`'s recipe (`ort_build.build_ort`): the builder's int4 model, its weights
  rewritten by sequential GPTQ with refitted scales and the output head split by token frequency, calibrated on
  --calib-seqs windows of 256 tokens of the Python tutorial (the shipped default is 128 windows: this run uses
  fewer to fit the time budget; most of its time is the output head's, whatever the calibration size).
  ours-equal (not run by default): the same on ORT GPTQ's calibration (--ort-gptq-seqs windows), to compare the
  two GPTQs on equal data; built without `build_ort`'s logits-cosine floor, which 512 tokens fail (0.895 < 0.9).
- ort-*: ONNX Runtime's quantiser on the builder's fp32 model (`ort_build.ort_model_dir(.., "fp32")`):
  `DefaultWeightOnlyQuantConfig` (round to nearest, MLAS), `KQuantWeightOnlyQuantConfig` (k-quant),
  `HQQWeightOnlyQuantConfig` (half-quadratic, data-free) and `GPTQWeightOnlyQuantConfig` (calibrated on the
  first --ort-gptq-seqs of ours' windows; its head calibrated on every position, then pruned again). ORT's GPTQ
  runs the whole model once per calibration window for each distinct MatMul input (121 here), so its time
  grows as 121 forward passes per window: the few windows here are what fits the budget. The ORT rows keep the
  fp32 token embedding (the builder ties it to the head only in its own quantised graphs), which costs disk
  space, not decode speed.

Measured for each: held-out perplexity (`slmforge.ship.evaluate.perplexity` over `ship.quantize.heldout_texts`,
the text `slm quantize` records in its manifest, first --windows windows of 256 tokens, via `ort_build.OrtLogits`),
decode tokens/s (GenAI's own greedy loop, the same chat prompt, --threads threads with slmforge's session
options, EOS suppressed, prefill excluded; each model in a fresh process per repetition, repetitions interleaved,
median of --reps) and quantisation wall time (quantiser alone, and from safetensors to the int4 directory).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("ours", "ours-equal", "ort-default", "ort-kquant", "ort-hqq", "ort-gptq")
DEFAULT_METHODS = ("ours", "ort-default", "ort-kquant", "ort-hqq", "ort-gptq")
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
WINDOW = 256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=24, help="Held-out windows of 256 tokens (manifest: 64).")
    ap.add_argument("--calib-seqs", type=int, default=32, help="ours: calibration windows (default 128).")
    ap.add_argument("--ort-gptq-seqs", type=int, default=2, help="ORT GPTQ (and ours-equal): windows.")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    ap.add_argument("--work", default="/tmp/slmforge-gptq-vs-ort")
    ap.add_argument("--md", help="Write the table (with date, machine and command) here.")
    ap.add_argument("--json", help="Write every number here.")
    ap.add_argument("--decode-cell", help=argparse.SUPPRESS)  # internal: time one model's decode, print JSON
    args = ap.parse_args()
    if args.decode_cell:
        print(json.dumps(decode_cell(json.loads(args.decode_cell))))
        return

    from transformers import AutoTokenizer

    from slmforge.core import hub
    from slmforge.infer import ort_build

    started = time.perf_counter()
    source = Path(hub.resolve_model(args.model))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    t = time.perf_counter()
    fp32_dir = ort_build.ort_model_dir(source, "fp32")  # cached: its build time is in its manifest
    fp32_build_s = json.loads((fp32_dir / "slmforge.json").read_text())["seconds"]
    say(f"fp32 ONNX model: {fp32_dir} (built in {fp32_build_s} s; {time.perf_counter() - t:.0f} s now)")

    rows: dict[str, dict] = {}
    for method in args.methods:
        t = time.perf_counter()
        try:
            if method.startswith("ours"):
                seqs = args.calib_seqs if method == "ours" else args.ort_gptq_seqs
                row = build_ours(source, work / method, seqs, gate=method == "ours")
            else:
                row = build_ort_method(method, source, fp32_dir, work / method, tokenizer, args)
                row["end_to_end_s"] = round(fp32_build_s + row["quantise_s"], 1)
                row["cosine"] = ort_build.compare_logits(source, work / method)["cosine_mean"]
        except Exception as e:  # one method's failure is a finding, not the end of the run
            say(f"{method}: failed after {time.perf_counter() - t:.0f} s: {type(e).__name__}: {e}")
            continue
        row["bytes"] = sum(f.stat().st_size for f in (work / method).glob("model.onnx*"))
        rows[method] = row
        say(f"{method}: built in {time.perf_counter() - t:.0f} s: {row}")

    ppl = measure_perplexity(source, tokenizer, {m: work / m for m in rows}, args)
    for method, value in ppl.items():
        if method in rows:
            rows[method]["perplexity"] = value
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    speeds: dict[str, list[float]] = {m: [] for m in rows}
    for rep in range(args.reps):
        for method in rows:
            cell = {"dir": str(work / method), "threads": args.threads, "ids": ids, "new": args.new_tokens}
            out = subprocess.run(
                [sys.executable, __file__, "--decode-cell", json.dumps(cell)], capture_output=True, text=True
            )
            if out.returncode != 0:
                say(f"  decode {method}: failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            speeds[method].append(r["decode_tok_s"])
            say(f"  rep {rep + 1} {method}: {r['decode_tok_s']:.1f} tok/s decode")
    for method, s in speeds.items():
        rows[method]["decode_tok_s"] = round(statistics.median(s), 1) if s else None
        rows[method]["decode_reps"] = [round(x, 1) for x in s]
    total = time.perf_counter() - started
    table = render(rows, ppl["fp32"], args, fp32_build_s, total)
    print(table)
    if args.md:
        Path(args.md).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "fp32_perplexity": ppl["fp32"],
                                               "fp32_build_s": fp32_build_s, "rows": rows,
                                               "total_s": round(total)}, indent=2))  # fmt: skip


# ---------------------------------------------------------------- building


def build_ours(source: Path, dest: Path, seqs: int, gate: bool = True) -> dict:
    """`slm quantize --scheme int4`'s model (`build_ort`), calibrated on `seqs` windows; `gate=False` keeps a
    model below `build_ort`'s logits-cosine floor (measured here, never shipped)."""
    from slmforge.infer import gptq, ort_build

    gptq.CALIB_SEQUENCES = seqs  # the default number of windows `calibration_batches` cuts
    floor = dict(ort_build.MIN_COSINE)
    if not gate:
        ort_build.MIN_COSINE["int4"] = 0.0
    t = time.perf_counter()
    try:
        made = ort_build.build_ort(source, dest, "int4", overwrite=True)
    finally:
        ort_build.MIN_COSINE.update(floor)
    return {
        "quantise_s": made["gptq_seconds"],
        "end_to_end_s": round(time.perf_counter() - t, 1),
        "calib_tokens": made["gptq_calib_tokens"],
        "cosine": made["verify"]["cosine_mean"],
    }


def build_ort_method(method: str, source: Path, fp32_dir: Path, dest: Path, tokenizer, args) -> dict:
    """ONNX Runtime's quantiser with `method`'s configuration on the fp32 model; the graph then gets the same
    gate/up fusion as ours, and the directory the fp32 one's config and tokenizer files."""
    import onnx
    from onnx import helper
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    from slmforge.infer import gptq
    from slmforge.infer.onnx_graph import every_position_head, fuse_shared_input_matmuls, save_onnx_in_place

    model = onnx.load(str(fp32_dir / "model.onnx"))
    prune = None
    calib_tokens = None
    if method == "ort-default":
        config = mnq.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, accuracy_level=4)
    elif method == "ort-kquant":
        config = mnq.KQuantWeightOnlyQuantConfig()
    elif method == "ort-hqq":
        config = mnq.HQQWeightOnlyQuantConfig(block_size=32, bits=4)
    else:  # ort-gptq: its head must see every position of the calibration windows, not only the last
        prune = _last_position_head(model)
        every_position_head(model)
        texts = gptq.default_calibration_texts()
        batches = gptq.calibration_batches(tokenizer, texts, args.ort_gptq_seqs)
        calib_tokens = int(batches.numel())
        decoder = json.loads((fp32_dir / "genai_config.json").read_text())["model"]["decoder"]
        kv_shape = (decoder["num_key_value_heads"], decoder["head_size"])
        config = mnq.GPTQWeightOnlyQuantConfig(
            calibration_data_reader=_Windows(model, batches.numpy(), kv_shape)
        )
    t = time.perf_counter()
    quantizer = mnq.MatMulNBitsQuantizer(
        model, block_size=32, is_symmetric=False, accuracy_level=4, algo_config=config
    )
    quantizer.process()
    quantise_s = time.perf_counter() - t
    model = quantizer.model.model
    for node in model.graph.node:  # HQQ writes no accuracy level (0: fp32 activations); the others write 4
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(helper.make_attribute("accuracy_level", 4))
    if prune is not None:
        _prune_head_again(model, prune)
    fused = fuse_shared_input_matmuls(model)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in fp32_dir.iterdir():
        if not f.name.startswith("model.onnx") and f.name != "slmforge.json":
            shutil.copy2(f, dest / f.name)
    save_onnx_in_place(model, dest)
    quantised = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
    return {"quantise_s": round(quantise_s, 1), "calib_tokens": calib_tokens, "fused": fused,
            "matmulnbits": quantised}  # fmt: skip


class _Windows:
    """ORT's calibration reader: one window a run, with the decoder's empty KV cache inputs."""

    def __init__(self, model, windows, kv_shape: tuple[int, int]):
        import numpy as np

        past = [i.name for i in model.graph.input if i.name.startswith("past_key_values")]
        self.feeds = []
        for row in windows:
            x = np.asarray([row], dtype=np.int64)
            feed = {"input_ids": x, "attention_mask": np.ones_like(x)}
            feed.update({name: np.zeros((1, kv_shape[0], 0, kv_shape[1]), np.float32) for name in past})
            self.feeds.append(feed)
        self.at = 0

    def get_next(self):
        self.at += 1
        return self.feeds[self.at - 1] if self.at <= len(self.feeds) else None

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _last_position_head(model) -> dict:
    """The builder's `prune_lm_head` nodes and their constants, kept to be put back after quantising."""
    nodes = {n.name: n for n in model.graph.node}
    gather, unsqueeze = nodes["/lm_head/prune/Gather"], nodes["/lm_head/prune/Unsqueeze"]
    consts = {gather.input[1], unsqueeze.input[1]}
    return {
        "nodes": [copy.deepcopy(gather), copy.deepcopy(unsqueeze)],
        "consts": [
            copy.deepcopy(n) for n in model.graph.node if n.op_type == "Constant" and n.output[0] in consts
        ],
        "inits": [copy.deepcopy(i) for i in model.graph.initializer if i.name in consts],
        "logits_dim": copy.deepcopy(next(o for o in model.graph.output if o.name == "logits").type),
    }


def _prune_head_again(model, kept: dict) -> None:
    """Undo `every_position_head`: the head reads the last position again, as in every other row."""
    graph = model.graph
    gather, unsqueeze = kept["nodes"]
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/"))
    head.input[0] = unsqueeze.output[0]
    made = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
    consts = [n for n in kept["consts"] if n.output[0] not in made]  # those `every_position_head` dropped
    at = list(graph.node).index(head)
    for offset, node in enumerate([*consts, gather, unsqueeze]):
        graph.node.insert(at + offset, node)
    graph.initializer.extend(i for i in kept["inits"] if i.name not in made)
    out = next(o for o in graph.output if o.name == "logits")
    out.type.CopyFrom(kept["logits_dim"])


# ---------------------------------------------------------------- measuring


def measure_perplexity(source: Path, tokenizer, dirs: dict[str, Path], args) -> dict[str, float]:
    """Held-out perplexity of torch fp32 and of every built model, on the same windows."""
    from slmforge.infer.model_dirs import load
    from slmforge.infer.ort_build import OrtLogits
    from slmforge.ship.evaluate import perplexity
    from slmforge.ship.quantize import heldout_texts

    texts = heldout_texts(None)
    model, _ = load(str(source), "cpu")
    tokens = args.windows * WINDOW
    out = {"fp32": round(perplexity(model, tokenizer, texts, WINDOW, tokens, 4, "cpu")["perplexity"], 4)}
    say(f"fp32 perplexity {out['fp32']}")
    del model
    for method, path in dirs.items():
        t = time.perf_counter()
        got = perplexity(OrtLogits(path, args.threads), tokenizer, texts, WINDOW, tokens, 4, "cpu")
        out[method] = round(got["perplexity"], 4)
        say(f"{method} perplexity {out[method]} ({time.perf_counter() - t:.0f} s)")
    return out


def decode_cell(cell: dict) -> dict:
    """GenAI's own greedy loop on one model: a warm-up, then `new` tokens timed after the first."""
    import numpy as np
    import onnxruntime_genai as og

    from slmforge.infer.engines import genai_session_options

    config = og.Config(cell["dir"])
    search = {"min_length": len(cell["ids"]) + cell["new"], "max_length": len(cell["ids"]) + cell["new"]}
    session = genai_session_options(cell["threads"])
    config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}, "search": search}))
    model = og.Model(config)

    def generate(n: int) -> float:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(cell["ids"]) + n, min_length=len(cell["ids"]) + n)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray([cell["ids"]], dtype=np.int32))
        generator.generate_next_token()  # the prompt's prefill and the first token: not timed
        t = time.perf_counter()
        for _ in range(n - 1):
            generator.generate_next_token()
        return (n - 1) / (time.perf_counter() - t)

    generate(8)
    return {"decode_tok_s": generate(cell["new"])}


# ---------------------------------------------------------------- reporting


def render(rows: dict, fp32_ppl: float, args, fp32_build_s: float, total_s: float) -> str:
    ours = rows.get("ours", {})
    names = {
        "ours": f"ours: GPTQ + refit + split head ({args.calib_seqs} calib windows)",
        "ours-equal": f"ours, ORT GPTQ's calibration ({args.ort_gptq_seqs} windows)",
        "ort-default": "ORT DefaultWeightOnlyQuantConfig (RTN)",
        "ort-kquant": "ORT KQuantWeightOnlyQuantConfig",
        "ort-hqq": "ORT HQQWeightOnlyQuantConfig",
        "ort-gptq": f"ORT GPTQWeightOnlyQuantConfig ({args.ort_gptq_seqs} calib windows)",
    }

    def ratio(method: str, key: str) -> str:
        a, b = rows[method].get(key), ours.get(key)
        return f"{a / b:.2f}×" if a and b else "–"

    lines = [
        "# slmforge GPTQ vs ONNX Runtime's MatMulNBits quantiser (int4, SmolLM2-135M-Instruct)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {machine()}",
        f"- command: `{' '.join(['python', *sys.argv])}`; whole run {total_s / 60:.1f} min",
        f"- onnxruntime {_version('onnxruntime')}, onnxruntime-genai {_version('onnxruntime_genai')}",
        f"- held-out perplexity: {args.windows} windows of {WINDOW} tokens of `slm quantize`'s default held-out "
        f"text; torch fp32: **{fp32_ppl:.3f}**",
        f"- decode: {args.new_tokens} tokens after a chat prompt, {args.threads} threads, median of "
        f"{args.reps} fresh processes; quantiser time: the quantisation step alone; end to end: safetensors to "
        f"the int4 directory (ORT rows: the {fp32_build_s:.0f} s fp32 builder conversion + the quantiser); logits "
        "cosine: mean over the positions of `ort_build.CHECK_TEXTS` against torch fp32 (`build_ort` refuses < 0.9)",
        "",
        "| method | perplexity | rise vs fp32 | ppl vs ours | decode tok/s | vs ours | quantiser s | vs ours "
        "| end to end s | on disk MB | logits cosine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in rows.items():
        ppl = r.get("perplexity")
        lines.append(
            f"| {names[method]} | {ppl:.3f} | {100 * (ppl / fp32_ppl - 1):+.2f} % | {ratio(method, 'perplexity')} "
            f"| {r.get('decode_tok_s')} | {ratio(method, 'decode_tok_s')} | {r['quantise_s']} "
            f"| {ratio(method, 'quantise_s')} | {r['end_to_end_s']} | {r['bytes'] / 1e6:.1f} | {r['cosine']:.4f} |"
        )
    lines += [
        "",
        "Decode tok/s per repetition: " + "; ".join(f"{m} {r['decode_reps']}" for m, r in rows.items()),
    ]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} vCPUs (shared; load {load:.1f} at the end), {platform.system()}"


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def say(text: str) -> None:
    print(f"[gptq_vs_ort] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
