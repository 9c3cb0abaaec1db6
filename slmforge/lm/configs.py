"""The causal-LM family's workflow configs: torch-free, so the CLI builds its options from them without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from slmforge.train.run import MAY_CHANGE, RunConfig


@dataclass
class PretrainConfig(RunConfig):
    data: str
    """Dataset directory written by `slm data ingest` (train.jsonl, val.jsonl)."""
    out: str
    """Run directory: config, metrics.jsonl, loss.png, ckpt/ and the final model/."""
    tokenizer: str | None = None
    """Tokenizer directory (`slm tokenizer train`); not used with --init, which brings its own."""
    depth: str = "4"
    """Ladder depth (2-32) or a named size (nano=4, micro=6, mini=8, small=12, base=16)."""
    init: str | None = None
    """Continue pretraining this HF causal LM (catalog name, local dir or hub id) instead of a fresh model."""
    seq_len: int = 256
    batch_size: int | None = None
    """Sequences per micro-batch per process (default: the ladder's, 16)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; global batch = batch_size × grad_accum × processes."""
    lr: float | None = None
    """Peak learning rate (default: the ladder's for fresh models, 3e-5 for --init)."""
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None
    """Linear warmup steps (default: 5% of the steps, at most 200)."""
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    tokens: int | None = None
    """Training tokens (default: 20 per parameter for fresh models, one epoch for --init)."""
    eval_windows: int = 64
    compile: bool = field(default=False, metadata=MAY_CHANGE)
    """torch.compile the model (faster steps after a one-off compile)."""
    # the run block's intervals: pretraining evaluates and checkpoints less often than RunConfig's 50 steps
    eval_every: int = field(default=100, kw_only=True, metadata=MAY_CHANGE)
    """Steps between val loss / bits-per-byte."""
    checkpoint_every: int = field(default=100, kw_only=True, metadata=MAY_CHANGE)
    """Steps between checkpoints."""


@dataclass
class FinetuneConfig(RunConfig):
    model: str
    """Base causal LM: catalog name (`slm pull`), local directory or hub id; full precision."""
    data: str
    """JSONL of {"messages": [...]} or {"prompt": ..., "completion": ...} rows."""
    out: str
    """Run directory: config.json, metrics.jsonl, loss.png, ckpt/ and model/ (full) or adapter/."""
    method: str = "lora"
    """full, lora or prompt-tuning."""
    val_data: str | None = None
    """Optional held-out JSONL of the same shape: masked val loss on a schedule."""
    chat_template: str | None = None
    """A Jinja chat template file, for tokenizers without one (or to replace theirs)."""
    seq_len: int = 512
    """Tokens per training sequence (capped at the model's context)."""
    pack: bool = True
    """Concatenate whole examples into seq_len windows (not for prompt tuning, whose prompt leads each row)."""
    on_bad_line: str = "stop"
    """stop (one error naming the first bad line and the count) or skip (skip and count them)."""
    on_long: str = "truncate"
    """truncate sequences longer than seq_len (counted) or error."""
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float | None = None
    """Peak learning rate (default: 5e-5 full, 2e-4 LoRA, 3e-2 prompt tuning)."""
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None
    """Linear warmup steps (default: 5% of the steps, at most 100)."""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    """Comma-separated module names (e.g. q_proj,v_proj) or all-linear (every projection but the LM head)."""
    virtual_tokens: int = 20
    """Prompt tuning: learned embeddings put before every input."""


@dataclass
class DistillLMConfig(RunConfig):
    teacher: str
    """Teacher causal LM: catalog name, local directory or hub id (logit: full precision)."""
    data: str
    """JSONL of {"messages": [...]} or {"prompt": ..., "completion": ...} rows (sequence: the prompts)."""
    out: str
    """Run directory (see the module docstring)."""
    student: str | None = None
    """Student causal LM (catalog name, directory or hub id); or use student_depth."""
    student_depth: int | None = None
    """Build the student: a Llama with the teacher's tokenizer and shape, this many layers."""
    student_from: str | None = None
    """With student_depth: cut the student's weights from this model instead of the teacher, e.g. the
    teacher's base before fine-tuning, so that SFT alone on the same student does not start from the
    teacher's task training. Same tokenizer and width as the teacher."""
    method: str = "logit"
    """logit (KL to the teacher's logits + CE; same tokenizer) or sequence (train on teacher completions)."""
    temperature: float = 2.0
    """Softmax temperature of the KL term (logit)."""
    alpha: float = 0.5
    """Weight of the KL term; 1 - alpha weighs the cross-entropy on the data's own tokens (logit)."""
    kd_on: str = "completion"
    """Logit: where the KL term is taken: completion (the assistant tokens) or all (every real token)."""
    kd_top_k: int = 0
    """Logit: match only the teacher's k most likely tokens per position (their softmax at T, renormalised;
    the student keeps its full softmax, so mass it puts elsewhere is penalised); 0 = the whole vocabulary.
    At T > 1 a large vocabulary otherwise spreads the teacher's mass over a long tail of unlikely tokens."""
    kd_hidden: float = 0.0
    """Logit: weight of the intermediate-state term (1 − cosine between each student layer's output and its
    source teacher layer's, every real token); 0 = logits only. Needs the teacher's hidden size."""
    val_data: str | None = None
    """Held-out JSONL: finetune's masked val loss on a schedule, and the before/after KL to the teacher."""
    max_new_tokens: int = 256
    """Sequence: the longest teacher completion, in tokens."""
    teacher_backend: str = "auto"
    """Sequence: the backend the teacher generates on (auto: the fastest measured; see slmforge.infer.engines)."""
    teacher_precision: str = "int8"
    """Sequence: the teacher's weights on the ort backend (int8, int4 or fp32)."""
    seq_len: int = 512
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    kl_examples: int = field(default=32, metadata=MAY_CHANGE)
    """Examples (of val_data, else data) on which the KL to the teacher is measured before and after."""
    # the run block's time budget, with distillation's own help: the teacher's generation is not counted
    max_minutes: float | None = field(default=None, kw_only=True, metadata=MAY_CHANGE)
    """Training time budget (the teacher's generation in --method sequence is not counted)."""


@dataclass
class MergeConfig:
    adapter: str
    """A LoRA adapter dir (`slm finetune --method lora` writes RUN/adapter; the run dir works too)."""
    out: str
    """Where the merged plain transformers model goes."""
    base: str | None = None
    """The full-precision base (default: the one the adapter records)."""
    overwrite: bool = False
