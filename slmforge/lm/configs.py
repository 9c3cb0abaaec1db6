"""The causal-LM family's workflow configs: torch-free, so the CLI builds its options from them without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from slmforge.train.run import MAY_CHANGE, RunConfig


@dataclass
class PretrainConfig(RunConfig):
    data: str
    """Dataset dir from `slm data ingest`.

    It holds train.jsonl and val.jsonl."""
    out: str
    """Run dir (config, metrics.jsonl, loss.png, ckpt/, model/)."""
    tokenizer: str | None = None
    """Tokenizer dir (fresh models).

    From `slm tokenizer train`; not used with --init, which brings its own."""
    depth: str = "4"
    """Ladder depth 2-32 or nano/micro/mini/small/base.

    The named sizes are depths too: nano=4, micro=6, mini=8, small=12, base=16."""
    init: str | None = None
    """Continue pretraining this HF causal LM.

    A catalog name, local dir or hub id, instead of a fresh model."""
    seq_len: int = 256
    """Tokens per training sequence."""
    batch_size: int | None = None
    """Sequences per micro-batch per process.

    Default: the ladder's (16)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step.

    The global batch is batch_size × grad_accum × processes."""
    lr: float | None = None
    """Peak learning rate (default from the ladder).

    With --init the default is 3e-5."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at this fraction of the peak learning rate."""
    warmup_steps: int | None = None
    """Warmup steps (default 5%, ≤200).

    Linear warmup from zero to the peak learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay of the matrices (norms and biases get none)."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this before each optimizer step."""
    tokens: int | None = None
    """Training tokens (default: 20 per parameter).

    With --init the default is one epoch of the data."""
    eval_windows: int = 64
    """Validation windows of seq_len tokens scored at each evaluation."""
    compile: bool = field(default=False, metadata=MAY_CHANGE)
    """torch.compile the model.

    Faster steps after a one-off compile."""
    # the run block's intervals: pretraining evaluates and checkpoints less often than RunConfig's 50 steps
    eval_every: int = field(default=100, kw_only=True, metadata=MAY_CHANGE)
    """Steps between val loss / bits-per-byte."""
    checkpoint_every: int = field(default=100, kw_only=True, metadata=MAY_CHANGE)
    """Steps between checkpoints."""


@dataclass
class FinetuneConfig(RunConfig):
    model: str
    """Base causal LM: catalog name, local dir or hub id (full precision)."""
    data: str
    """JSONL of {"messages": [...]} or {"prompt", "completion"} rows.

    A messages row may add OpenAI's "tools", assistant "tool_calls" and "tool" messages; the chat template
    must render them (docs/finetune.md, examples/tools/)."""
    out: str
    """Run dir (config, metrics.jsonl, ckpt/, model/ or adapter/).

    Also loss.png; full fine-tuning writes model/, LoRA and prompt tuning adapter/."""
    method: str = "lora"
    """full, lora or prompt-tuning."""
    val_data: str | None = None
    """Held-out JSONL: masked val loss on a schedule.

    The same shape as --data."""
    chat_template: str | None = None
    """Jinja chat template file to use.

    For tokenizers without one, or to replace theirs."""
    seq_len: int = 512
    """Tokens per sequence (capped at the model's context)."""
    pack: bool = True
    """Pack whole examples into --seq-len windows.

    Not for prompt tuning, whose learned prompt leads each row."""
    on_bad_line: str = "stop"
    """stop (error) or skip malformed lines.

    stop names the first bad line and the count; skip counts them."""
    on_long: str = "truncate"
    """truncate (counted) or error on long sequences."""
    epochs: float = 1.0
    """Passes over the data (unless --max-steps)."""
    batch_size: int = 8
    """Sequences per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float | None = None
    """Peak lr (default 5e-5 full, 2e-4 LoRA, 3e-2 prompt)."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at this fraction of the peak learning rate."""
    warmup_steps: int | None = None
    """Warmup steps (default 5%, ≤100)."""
    weight_decay: float = 0.0
    """AdamW weight decay of the trained matrices (norms and biases get none)."""
    grad_clip: float = 1.0
    """Clip the gradient norm of the trained parameters to this before each optimizer step."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scale numerator (scale = alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch's input, in [0, 1)."""
    lora_targets: str = "all-linear"
    """Comma-separated modules (q_proj,v_proj) or all-linear.

    all-linear is every projection but the LM head."""
    virtual_tokens: int = 20
    """Prompt tuning: learned tokens.

    Learned embeddings put before every input."""


@dataclass
class DistillLMConfig(RunConfig):
    teacher: str
    """Teacher causal LM: catalog name, local dir or hub id (logit: full precision)."""
    data: str
    """JSONL of chat or prompt/completion rows (loss on the assistant tokens; --method sequence: the prompts).
    """
    out: str
    """Run dir to write.

    model/ (plain transformers, chat template and EOS), the metrics and checkpoints of `slm finetune`, and the
    KL to the teacher before and after."""
    student: str | None = None
    """A causal LM for a causal-LM teacher.

    Catalog name, dir or hub id; or build one with student_depth."""
    student_depth: int | None = None
    """Build the student, a Llama with the teacher's tokenizer and width and N layers, initialised from the
    teacher's embeddings and N evenly spaced layers."""
    student_from: str | None = None
    """With --student-depth: cut the student from this model (e.g. the teacher's base before fine-tuning)
    instead of the teacher; same tokenizer and width.

    So that SFT alone on the same student does not start from the teacher's task training."""
    method: str = "logit"
    """logit (KL to the teacher's logits + cross-entropy; needs the teacher's tokenizer) or sequence
    (fine-tune on the teacher's greedy completions; any tokenizer)."""
    temperature: float = 2.0
    """Softmax temperature of the distillation loss."""
    alpha: float = 0.5
    """Weight of the distillation loss (the rest: labels).

    Logit: 1 - alpha weighs the cross-entropy on the data's own tokens."""
    kd_on: str = "completion"
    """Logit: take the KL on the completion tokens, or on all tokens (prompt too)."""
    kd_top_k: int = 0
    """Logit: match only the teacher's k most likely tokens per position (renormalised at --temperature); 0 =
    the whole vocabulary.

    The student keeps its full softmax, so mass it puts elsewhere is penalised. At T > 1 a large vocabulary
    otherwise spreads the teacher's mass over a long tail of unlikely tokens."""
    kd_hidden: float = 0.0
    """Logit: weight of an intermediate-state term (1 - cosine between each student layer's output and that of
    the teacher layer it was cut from, every token); 0 = logits only.

    Needs the teacher's hidden size."""
    val_data: str | None = None
    """Held-out JSONL for the val loss and the KL report.

    Finetune's masked val loss on a schedule, and the before/after KL to the teacher."""
    max_new_tokens: int = 256
    """--method sequence: the longest teacher completion, in tokens."""
    teacher_backend: str = "auto"
    """--method sequence: auto, ort, torch or llama.cpp for the teacher.

    auto: the fastest measured (slmforge.infer.engines)."""
    teacher_precision: str = "int8"
    """--method sequence: the teacher's weights on the ort backend (int8, int4 or fp32)."""
    seq_len: int = 512
    """Tokens per training sequence."""
    epochs: float = 1.0
    """Passes over the data."""
    batch_size: int = 8
    """Sequences per batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-4
    """Peak learning rate."""
    kl_examples: int = field(default=32, metadata=MAY_CHANGE)
    """Examples (of val_data, else data) on which the KL to the teacher is measured before and after."""
    # the run block's time budget, with distillation's own help: the teacher's generation is not counted
    max_minutes: float | None = field(default=None, kw_only=True, metadata=MAY_CHANGE)
    """Training time budget (the teacher's generation in --method sequence is not counted)."""


@dataclass
class MergeConfig:
    adapter: str
    """LoRA adapter dir (or the finetune run dir holding adapter/)."""
    out: str
    """Directory for the merged transformers model."""
    base: str | None = None
    """Full-precision base (default: the one recorded)."""
    overwrite: bool = False
    """Replace an existing --out."""
