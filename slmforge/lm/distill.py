"""Knowledge distillation of causal LMs: a teacher's behaviour into a smaller student, on SFT data.

`distill_lm(cfg)` reads top to bottom: validate (nothing is written before the inputs are known good) →
make the student (given, or `--student-depth N`: a fresh Llama cut from the teacher) → make the training
data (logit: the data file itself; sequence: the teacher's greedy completions of its prompts) → train the
student with `slmforge.lm.finetune` (full fine-tuning: its data masks, packing, lr schedule, time budget,
telemetry, checksummed checkpoints, resume with the same data order, and OUT/model with the chat template
and EOS ids) → measure the KL to the teacher before and after.

Two methods:
- logit (default): the loss on the assistant/completion tokens (finetune's masks) is
  alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · cross-entropy, where _T is the softmax at
  temperature T (Hinton et al., 2015). With `kd_on="all"` the KL term is the mean over every real token,
  prompt included (the cross-entropy stays on the completion): a fresh or cut-down student then copies the
  teacher's reading of the user's text too, about six times the supervised positions on short answers.
  Teacher and student must share the tokenizer (the same token → id map); otherwise the logits do not line
  up and the error names `--method sequence`. With `kd_hidden` W > 0 an intermediate-state term is added:
  W · the mean over real tokens and student layers of 1 − cos(student layer j's output, the output of the
  teacher layer it was cut from, `layer_indices(teacher layers, student layers)[j]`), the last compared
  after the final norm. Distillation guides for large depth cuts recommend it (Minitron, Muralidharan
  et al., 2024: logit + intermediate-state distillation when depth is reduced significantly).
- sequence (Kim & Rush, 2016): the teacher writes greedy completions for the prompts of the data file
  (slmforge.infer.engines' fastest backend), saved as OUT/teacher.jsonl, and the student is fine-tuned on them
  (plain cross-entropy). Works across tokenizers and with any teacher that generates (GGUF included).

`--student-depth N` builds the student as a Llama with the teacher's tokenizer and shape (hidden size,
heads, KV heads, MLP width, RoPE, norms, tied embeddings) but N layers (see `build_student`): every
tensor is copied from the teacher where the names and shapes match, namely the embeddings, the final
norm, the LM head if untied, and N evenly spaced teacher layers, first and last included (layer 0 alone
for N = 1), as layer dropping with distillation healing works best from the teacher's own weights.
`--student-from M` cuts the same student from another model M with the teacher's tokenizer and width
instead, typically the teacher's base before fine-tuning: a student cut from the fine-tuned teacher already
carries its task training, which SFT alone on that student inherits too, so comparing the two understates
KD (on BANKING77: +0.9 points cut from the fine-tuned teacher, +5.1 cut from its base; BENCHMARKS.md).

Run directory `--out`: distill_config.json, student-init/ (with --student-depth), teacher.jsonl (sequence),
finetune's config.json, metrics.jsonl, loss.png, ckpt/ and model/, and distill.json (the results).
The logged training loss is the distillation loss per trained token.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_dir, atomic_file, write_json
from slmforge.core.progress import quiet_hf
from slmforge.data import sft_data
from slmforge.lm.configs import DistillLMConfig, FinetuneConfig
from slmforge.lm.finetune import finetune, label_logits
from slmforge.train.losses import hidden_cos_sum, kd_loss_sum, kl_sum
from slmforge.train.pretrained import base_model, check_full_precision, load_base, load_tokenizer, quantised
from slmforge.train.run import check_run_block, clear_run_dir, open_run

METHODS = ("logit", "sequence")
KD_ON = ("completion", "all")
CONFIG_FILE = "distill_config.json"
RESULT_FILE = "distill.json"
STUDENT_DIR = "student-init"
TEACHER_DATA = "teacher.jsonl"
BACKENDS = ("auto", "ort", "torch", "llama.cpp")


@dataclass
class DistillLMResult:
    out: str
    model_dir: str
    method: str
    student_init: str
    """The student the training started from (the given one, or OUT/student-init)."""
    steps: int
    first_loss: float
    train_loss: float
    kl_before: float | None
    """Mean KL(teacher ‖ student) per trained token at temperature 1, before training (None across tokenizers)."""
    kl_after: float | None
    student_params: int
    teacher_params: int | None
    student_layers: int
    teacher_data: str | None
    """Sequence: OUT/teacher.jsonl."""
    completions: int
    skipped_empty: int
    """Sequence: prompts the teacher answered with nothing (left out of teacher.jsonl)."""
    elapsed_s: float
    val: dict | None


def distill_lm(cfg: DistillLMConfig, progress: bool = True) -> DistillLMResult:
    from slmforge.core.progress import stderr

    out = Path(cfg.out)
    cfg = _run_dirs_to_models(cfg)
    cfg, fresh = _validate(cfg, out)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    try:
        write_json(out / CONFIG_FILE, dataclasses.asdict(cfg))

        # ---- the student
        if cfg.student_depth is not None:
            student = out / STUDENT_DIR
            if not (student / "config.json").exists():
                info = build_student(cfg.student_from or cfg.teacher, cfg.student_depth, student, cfg.seed)
                stderr.print(
                    f"student: {cfg.student_depth} of {cfg.student_from or 'the teacher'}'s "
                    f"{info['teacher_layers']} layers (layers {info['layers']}), {info['params']:,} parameters, "
                    f"{len(info['copied'])} tensors copied",
                    highlight=False,
                )
            student = str(student)
        else:
            from slmforge.core.hub import resolve_model

            student = resolve_model(cfg.student)

        # ---- the training data
        completions = skipped = 0
        teacher_data = None
        loss_fn = None
        teacher_model = None
        if cfg.method == "sequence":
            teacher_data = out / TEACHER_DATA
            if not teacher_data.exists():
                completions, skipped = write_teacher_completions(cfg, teacher_data)
            else:
                completions = sum(1 for ln in teacher_data.read_text(encoding="utf-8").splitlines() if ln)
            data = str(teacher_data)
        else:
            teacher_model = _load_model(cfg.teacher)
            layer_map = None
            if cfg.kd_hidden > 0:
                depth = _config(_resolve(student))["num_hidden_layers"]
                layer_map = layer_indices(teacher_model.config.num_hidden_layers, depth)
            loss_fn = TeacherLoss(teacher_model, cfg.temperature, cfg.alpha, cfg.kd_on == "all", cfg.kd_top_k,
                                  cfg.kd_hidden, layer_map)  # fmt: skip
            data = cfg.data

        # ---- train (finetune's loop; the run dir is ours, so finetune always "continues" it)
        ft = FinetuneConfig(
            model=student, data=data, out=cfg.out, method="full", val_data=cfg.val_data,
            seq_len=cfg.seq_len, epochs=cfg.epochs, max_steps=cfg.max_steps, max_minutes=cfg.max_minutes,
            batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr, eval_every=cfg.eval_every,
            checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every, precision=cfg.precision,
            threads=cfg.threads, device=cfg.device, seed=cfg.seed, resume=True,
        )  # fmt: skip
        write_json(out / "config.json", dataclasses.asdict(ft))
        r = finetune(ft, progress, loss_fn)
    except BaseException:
        if fresh and not any((out / "ckpt").glob("*.pt")):
            shutil.rmtree(out, ignore_errors=True)  # nothing worth resuming: leave no half-made run
        raise

    # ---- how close the student came to the teacher
    kl_before = kl_after = None
    teacher_params = None
    if teacher_model is None and _can_load_teacher(cfg.teacher):
        teacher_model = _load_model(cfg.teacher)
    if teacher_model is not None:
        teacher_params = sum(p.numel() for p in teacher_model.parameters())
        if same_tokenizer(cfg.teacher, student) is None:
            kl_data = cfg.val_data or cfg.data
            kl_before = teacher_kl(teacher_model, student, kl_data, cfg.seq_len, cfg.kl_examples)
            kl_after = teacher_kl(teacher_model, r.model_dir, kl_data, cfg.seq_len, cfg.kl_examples)
            stderr.print(f"KL to the teacher (T=1): {kl_before:.4f} → {kl_after:.4f}", highlight=False)
    layers = json.loads((Path(r.model_dir) / "config.json").read_text()).get("num_hidden_layers", 0)
    result = DistillLMResult(
        out=str(out), model_dir=r.model_dir, method=cfg.method, student_init=student, steps=r.steps,
        first_loss=r.first_loss, train_loss=r.train_loss, kl_before=kl_before, kl_after=kl_after,
        student_params=r.params, teacher_params=teacher_params, student_layers=layers,
        teacher_data=str(teacher_data) if teacher_data else None, completions=completions,
        skipped_empty=skipped, elapsed_s=round(time.perf_counter() - started, 1), val=r.val,
    )  # fmt: skip
    write_json(out / RESULT_FILE, dataclasses.asdict(result))
    return result


# ----------------------------------------------------------------------------- the logit loss


class TeacherLoss:
    """finetune's `loss_fn`: alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · CE, summed over the
    batch's labelled positions (finetune divides by the step's trained tokens). With `every_token`, the KL
    is averaged over all real positions and scaled to the labelled count, so after finetune's division the
    loss is alpha · T² · mean KL (every token) + (1 − alpha) · mean CE (completion tokens). With `hidden`
    W > 0 (and `layer_map`, student layer → teacher layer), W · the mean intermediate-state distance per real
    token (see `hidden_cos_sum`) is added the same way."""

    def __init__(self, teacher, temperature: float, alpha: float, every_token: bool = False, top_k: int = 0,
                 hidden: float = 0.0, layer_map: list[int] | None = None):  # fmt: skip
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha
        self.top_k = top_k
        self.every_token = every_token and alpha > 0
        self.hidden = hidden if layer_map else 0.0
        self.layer_map = layer_map
        self.selected: bool | None = None  # teacher head on labelled positions only (checked once)
        self.full_head = self.every_token or self.hidden > 0  # the student's head runs on every position

    def __call__(self, model, b: dict, selected: bool = False) -> torch.Tensor:
        if not self.every_token and not self.hidden:
            student, targets = label_logits(model, b, selected)
            return kd_loss_sum(
                student, self.teacher_logits(b), targets, self.temperature, self.alpha, self.top_k
            )
        states = self.hidden > 0
        student, labelled, targets, s_states = _all_logits(model, b, states)
        with torch.no_grad():
            teacher, _, _, t_states = _all_logits(self._on(b), b, states)
        if self.every_token:
            ce = F.cross_entropy(student[labelled], targets, reduction="sum")
            per_real = targets.numel() / max(1, labelled.numel())  # a mean over real tokens as a labelled sum
            kl = kl_sum(student, teacher, self.temperature, self.top_k) * per_real
            loss = self.alpha * kl + (1 - self.alpha) * ce
        else:
            loss = kd_loss_sum(student[labelled], teacher[labelled], targets, self.temperature, self.alpha,
                               self.top_k)  # fmt: skip
        if states:
            mask = b["attention_mask"].bool()
            real = int(mask.sum())
            h = hidden_cos_sum(s_states, t_states, self.layer_map, mask)
            loss = loss + self.hidden * h * targets.numel() / max(1, real)
        return loss

    def _on(self, b: dict):
        device = b["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        return self.teacher

    @torch.no_grad()
    def teacher_logits(self, b: dict) -> torch.Tensor:
        teacher = self._on(b)
        if self.selected is None:
            self.selected = _selected_ok(teacher, b)
        return label_logits(teacher, b, self.selected)[0]


def _all_logits(model, b: dict, states: bool = False) -> tuple:
    """(float logits [n, vocab] at the n real next-token positions of `b`, which of them are labelled [n],
    the labelled targets, and with `states` the model's hidden states (embeddings, then each layer's output,
    the last after the final norm), else None)."""
    mask = b["attention_mask"][:, 1:].bool()
    y = b["labels"][:, 1:][mask]
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False,
                output_hidden_states=states)  # fmt: skip
    labelled = y != sft_data.IGNORE
    return out.logits[:, :-1][mask].float(), labelled, y[labelled], out.hidden_states if states else None


@torch.no_grad()
def _selected_ok(model, b: dict) -> bool:
    """Whether the head-on-labelled-positions logits equal the full forward's for this model (in fp32)."""
    device = b["input_ids"].device
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            full, fast = label_logits(model, b)[0], label_logits(model, b, True)[0]
    except (AttributeError, TypeError, NotImplementedError, RuntimeError):
        return False
    return full.shape == fast.shape and torch.allclose(full, fast, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def teacher_kl(teacher, student: str | Path, data: str, seq_len: int = 512, examples: int = 32,
               temperature: float = 1.0) -> float:  # fmt: skip
    """Mean KL(teacher_T ‖ student_T) per trained (assistant) token over the first `examples` rows of
    `data`, as finetune masks them; `teacher` is a loaded model or a path, `student` a path, and the two
    must share the tokenizer."""
    teacher = _load_model(str(teacher)) if isinstance(teacher, str | Path) else teacher
    model = _load_model(str(student))
    tokenizer = load_tokenizer(_resolve(student))
    stop_ids = sft_data.stop_token_ids(tokenizer, model.generation_config)
    rows = sft_data.load_sft(data, tokenizer, seq_len, "skip", "truncate", stop_ids)[0][:examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(teacher.parameters()).device
    model.to(device)
    teacher.eval()
    total, tokens = 0.0, 0
    for i in range(0, len(rows), 8):
        b = {k: v.to(device) for k, v in sft_data.collate(rows[i : i + 8], pad_id).items()}
        s, _ = label_logits(model, b)
        t, _ = label_logits(teacher, b)
        v = min(s.shape[-1], t.shape[-1])
        total += F.kl_div(
            F.log_softmax(s[:, :v] / temperature, -1), F.log_softmax(t[:, :v] / temperature, -1),
            log_target=True, reduction="sum",
        ).item()  # fmt: skip
        tokens += s.shape[0]
    return total / max(1, tokens)


# ----------------------------------------------------------------------------- tokenizers


def same_tokenizer(teacher: str, student: str) -> str | None:
    """None when the two models map every token to the same id; else what differs, in a few words."""
    a, b = _tokenizer(teacher).get_vocab(), _tokenizer(student).get_vocab()
    if a == b:
        return None
    if len(a) != len(b):
        return f"{len(a):,} vs {len(b):,} tokens"
    differ = sum(1 for tok, i in a.items() if b.get(tok) != i)
    return f"{differ:,} of {len(a):,} tokens have different ids"


def _tokenizer(model: str):
    return load_tokenizer(_resolve(model))


# ----------------------------------------------------------------------------- the student


def build_student(teacher: str, depth: int, out: str | Path, seed: int = 0) -> dict:
    """Write to `out` (atomically) a Llama student with the teacher's tokenizer and shape and `depth` layers.

    The config takes every Llama field of the teacher's config (hidden size, MLP width, heads, KV heads,
    head dim, RoPE, norm epsilon, activation, context, tied embeddings, special ids) with
    num_hidden_layers = depth. The weights are a seeded random init, then every tensor whose name and
    shape match a teacher tensor is copied: the embeddings, final norm and (if untied) LM head, and for
    student layer k the teacher layer `layer_indices(teacher_layers, depth)[k]`, i.e. evenly spaced
    layers with the first and the last kept (layer 0 alone for depth 1). A non-Llama teacher's tensors
    that Llama lacks (e.g. Qwen2's q/k/v biases) are not copied. Returns what was done (also in student.json).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    base = _resolve(teacher)
    check_full_precision(base, teacher, "build the student from the full-precision model")
    model = _load_model(teacher)
    tokenizer = load_tokenizer(base)
    tc = base_model(model).config
    n = tc.num_hidden_layers
    if not 1 <= depth <= n:
        raise SlmError(f"--student-depth must be between 1 and the teacher's {n} layers, not {depth}")
    known = set(LlamaConfig().to_dict())
    drop = {"architectures", "model_type", "transformers_version", "_name_or_path", "num_hidden_layers",
            "quantization_config", "auto_map", "layer_types", "dtype", "torch_dtype"}  # fmt: skip
    fields = {k: v for k, v in tc.to_dict().items() if k in known and k not in drop}
    config = LlamaConfig(**fields, num_hidden_layers=depth)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    student = LlamaForCausalLM(config)
    idx = layer_indices(n, depth)
    source = model.state_dict()
    state, copied, skipped = {}, [], []
    for name, p in student.state_dict().items():
        m = re.match(r"model\.layers\.(\d+)\.(.+)", name)
        src = f"model.layers.{idx[int(m[1])]}.{m[2]}" if m else name
        if src in source and source[src].shape == p.shape:
            state[name] = source[src]
            copied.append(name)
        else:
            skipped.append(name)
    student.load_state_dict(state, strict=False)
    student.generation_config = model.generation_config
    params = sum(p.numel() for p in student.parameters())
    info = {
        "teacher": teacher, "teacher_layers": n, "depth": depth, "layers": idx, "params": params,
        "copied": copied, "not_copied": skipped,
    }  # fmt: skip
    with atomic_dir(out, overwrite=True) as tmp, quiet_hf():
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "student.json", info)
    return info


def layer_indices(n: int, keep: int) -> list[int]:
    """`keep` evenly spaced indices of `n` layers, the first and the last among them ([0] for keep = 1)."""
    if keep == 1:
        return [0]
    return [round(k * (n - 1) / (keep - 1)) for k in range(keep)]


# ----------------------------------------------------------------------------- sequence-level data


def write_teacher_completions(cfg: DistillLMConfig, path: Path) -> tuple[int, int]:
    """The teacher's greedy completion for each prompt of cfg.data, as JSONL at `path` (atomically).

    A prompt/completion row keeps its prompt (and system); a chat row's prompt is its conversation up to
    the last assistant turn: a single user turn (after an optional system one) becomes a prompt/completion
    row, a longer conversation a messages row ending in the teacher's reply. Empty replies are left out.
    Returns (rows written, empty replies)."""
    from slmforge.core.progress import stderr
    from slmforge.infer.engines import open_lm
    from slmforge.infer.generate import GenerateConfig, complete_batch, prompt_ids

    rows, _ = sft_data.read_rows(cfg.data)
    lm = open_lm(cfg.teacher, cfg.teacher_backend, cfg.teacher_precision, cfg.threads, cfg.device)
    tokenizer = lm.tokenizer
    chat = bool(getattr(tokenizer, "chat_template", None))
    contexts = [_context(row) for _, row in rows]
    prompts = []
    for (_, row), messages in zip(rows, contexts, strict=True):
        if "messages" not in row and not chat:  # as finetune reads it: system + prompt, then the completion
            prompts.append(list(tokenizer(row.get("system", "") + row["prompt"])["input_ids"]))
        else:
            prompts.append(prompt_ids(tokenizer, messages, chat=chat))
    stderr.print(
        f"teacher: writing {len(prompts)} greedy completions (≤{cfg.max_new_tokens} tokens) "
        f"on {lm.backend} ({lm.info.get('why', '')})",
        highlight=False,
    )
    t0 = time.perf_counter()
    gen = GenerateConfig(model=cfg.teacher, max_new_tokens=cfg.max_new_tokens, temperature=0.0, seed=cfg.seed)
    done = complete_batch(lm, prompts, gen)
    written = empty = 0
    with atomic_file(path) as f:
        for (_, row), messages, c in zip(rows, contexts, done, strict=True):
            text = c.text.strip()
            if not text:
                empty += 1
                continue
            f.write(json.dumps(_completion_row(row, messages, text), ensure_ascii=False) + "\n")
            written += 1
        if not written:
            raise SlmError(
                f"the teacher {cfg.teacher} wrote an empty completion for every prompt of {cfg.data}"
            )
    tokens = sum(len(c.token_ids) for c in done)
    stderr.print(
        f"teacher: {written} completions, {tokens:,} tokens in {time.perf_counter() - t0:.0f} s"
        + (f"; {empty} empty replies left out" if empty else ""),
        highlight=False,
    )
    return written, empty


def _context(row: dict) -> list[dict]:
    """The conversation the teacher answers: a chat row up to its last assistant turn; system + prompt."""
    if "messages" in row:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return messages[:last]
    head = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return head + [{"role": "user", "content": row["prompt"]}]


def _completion_row(row: dict, context: list[dict], text: str) -> dict:
    if "messages" not in row:
        return {k: row[k] for k in ("system", "prompt") if k in row} | {"completion": text}
    roles = [m["role"] for m in context]
    if roles in (["user"], ["system", "user"]):
        system = {"system": context[0]["content"]} if roles[0] == "system" else {}
        return system | {"prompt": context[-1]["content"], "completion": text}
    return {"messages": context + [{"role": "assistant", "content": text}]}


# ----------------------------------------------------------------------------- validation and loading


def _validate(cfg: DistillLMConfig, out: Path) -> tuple[DistillLMConfig, bool]:
    """Check everything that can be checked before writing; (config, whether this is a fresh run)."""
    cfg = open_run(cfg, out, CONFIG_FILE, "distillation run")
    fresh = not cfg.resume
    if cfg.method not in METHODS:
        raise SlmError(f"--method must be logit or sequence, not {cfg.method!r}")
    if (cfg.student is None) == (cfg.student_depth is None):
        raise SlmError(
            "give the student: --student MODEL or --student-depth N (a Llama cut from the teacher)"
        )
    if cfg.student_depth is not None and cfg.student_depth < 1:
        raise SlmError(f"--student-depth must be at least 1, not {cfg.student_depth}")
    if cfg.student_from is not None and cfg.student_depth is None:
        raise SlmError(
            "--student-from names the model to cut a --student-depth N student from; add --student-depth"
        )
    if cfg.temperature <= 0:
        raise SlmError(f"--temperature must be above 0, not {cfg.temperature}")
    if not 0 <= cfg.alpha <= 1:
        raise SlmError(f"--alpha must be in [0, 1], not {cfg.alpha}")
    if cfg.kd_top_k < 0:
        raise SlmError(f"--kd-top-k must be 0 (the whole vocabulary) or a positive count, not {cfg.kd_top_k}")
    if cfg.kd_hidden < 0:
        raise SlmError(f"--kd-hidden must be 0 (logits only) or a positive weight, not {cfg.kd_hidden}")
    if cfg.kd_on not in KD_ON:
        raise SlmError(f"--kd-on must be one of {', '.join(KD_ON)}, not {cfg.kd_on!r}")
    check_run_block(cfg)
    for name in ("seq_len", "batch_size", "grad_accum", "max_new_tokens", "kl_examples"):
        if getattr(cfg, name) < 1:
            raise SlmError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.epochs <= 0:
        raise SlmError("--epochs must be positive")
    if not 0 < cfg.lr < 1:
        raise SlmError(f"--lr {cfg.lr} is out of range (0, 1)")
    if cfg.teacher_backend not in BACKENDS:
        raise SlmError(f"--teacher-backend must be one of {', '.join(BACKENDS)}, not {cfg.teacher_backend!r}")
    for path in (cfg.data, cfg.val_data):
        if path is not None:
            rows, problems = sft_data.read_rows(path)  # a missing, empty or malformed file stops here
            sft_data._check_problems(path, problems, "stop")
            tool_row = next((line for line, row in rows if "tools" in row), None)
            if cfg.method == "sequence" and tool_row is not None:
                raise SlmError(
                    f"{path} line {tool_row} has tools, but sequence-level distillation has the teacher write "
                    "plain replies, which would drop them; distil tool rows with --method logit"
                )
    teacher = _resolve(cfg.teacher)
    if cfg.student is not None:
        _resolve(cfg.student)
    from slmforge.lm.evaluate import is_causal_lm

    if not is_causal_lm(teacher):
        raise SlmError(f"{cfg.teacher} is not a causal LM (a *ForCausalLM model), so it cannot teach one")
    if cfg.method == "logit" or cfg.student_depth is not None:
        check_full_precision(teacher, cfg.teacher, "distill from the full-precision model")
    source, whose = teacher, "the teacher"
    if cfg.student_from is not None:
        source, whose = _check_student_source(cfg.teacher, teacher, cfg.student_from), cfg.student_from
    if cfg.student_depth is not None:
        layers = _config(source).get("num_hidden_layers")
        if layers is not None and cfg.student_depth > layers:
            raise SlmError(f"--student-depth must be between 1 and {whose}'s {layers} layers, not "
                           f"{cfg.student_depth}")  # fmt: skip
    if cfg.kd_hidden > 0 and cfg.method == "logit":
        width = _config(teacher).get("hidden_size")
        student = {"hidden_size": width, "num_hidden_layers": cfg.student_depth}
        if cfg.student is not None:
            student = _config(_resolve(cfg.student))
        if student.get("hidden_size") != width:
            raise SlmError(f"--kd-hidden compares hidden states, so the student needs the teacher's hidden size "
                           f"({width}), not {student.get('hidden_size')}; use --student-depth N or --kd-hidden 0")  # fmt: skip
        if (student.get("num_hidden_layers") or 0) < 2:
            raise SlmError("--kd-hidden needs a student of at least 2 layers (a 1-layer student's only output "
                           "is the final one, normed, while its teacher layer's is not)")  # fmt: skip
    if cfg.student_depth is None and cfg.method == "logit":
        differ = same_tokenizer(cfg.teacher, cfg.student)
        if differ:
            raise SlmError(
                f"logit distillation needs one tokenizer, but {cfg.teacher} and {cfg.student} differ "
                f"({differ}); use sequence-level distillation (--method sequence), which trains on the "
                "teacher's generated text, or a student built on the teacher's tokenizer (--student-depth N)"
            )
    if not cfg.resume and cfg.overwrite and out.exists():
        clear_run_dir(out)  # --overwrite removes only a run slmforge made
    return cfg, fresh


def _check_student_source(teacher_name: str, teacher: str, name: str) -> str:
    """The --student-from model, resolved: a full-precision causal LM with the teacher's tokenizer and width."""
    from slmforge.lm.evaluate import is_causal_lm

    source = _resolve(name)
    if not is_causal_lm(source):
        raise SlmError(f"--student-from {name} is not a causal LM (a *ForCausalLM model)")
    check_full_precision(source, name, "cut the student from the full-precision model")
    differ = same_tokenizer(teacher_name, name)
    if differ:
        raise SlmError(f"--student-from {name} and the teacher {teacher_name} need one tokenizer ({differ})")
    widths = [_config(p).get("hidden_size") for p in (teacher, source)]
    if widths[0] != widths[1]:
        raise SlmError(f"--student-from {name} has hidden size {widths[1]}, the teacher {widths[0]}: "
                       "logit distillation's student takes the teacher's shape")  # fmt: skip
    return source


def _run_dirs_to_models(cfg: DistillLMConfig) -> DistillLMConfig:
    """A full fine-tuning (or distillation) run dir as teacher or student means its model/."""
    from slmforge.infer.model_dirs import output_dir

    def model_of(name: str | None) -> str | None:
        if name is None or not Path(name).is_dir():
            return name
        found = output_dir(name)
        return str(found) if (found / "config.json").exists() else name

    return dataclasses.replace(cfg, teacher=model_of(cfg.teacher), student=model_of(cfg.student))


def _resolve(model: str) -> str:
    from slmforge.core.hub import resolve_model

    return resolve_model(str(model))


def _config(path: str) -> dict:
    p = Path(path) / "config.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _can_load_teacher(teacher: str) -> bool:
    """Whether the teacher loads as full-precision transformers weights (a GGUF teacher does not)."""
    p = Path(_resolve(teacher))
    return p.is_dir() and (p / "config.json").exists() and quantised(p) is None


def _load_model(model: str):
    return load_base(_resolve(model), model).eval()
