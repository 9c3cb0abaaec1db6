"""The classifier family's workflow configs: torch-free, so the CLI builds its options from them without loading torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClassifyTrainConfig:
    data: str
    """Training file: .csv (header row) or .jsonl.

    One object per line in .jsonl."""
    out: str
    """Model directory to write."""
    text_col: str = "text"
    """Column / field holding the text."""
    label_col: str = "label"
    """Column / field holding the label."""
    arch: str = "encoder"
    """encoder (fine-tune --base), tfidf (n-gram linear model) or static.

    tfidf: a scikit-learn TF-IDF word + char n-gram logistic regression saved as JSON + safetensors
    (slmforge.clf.tfidf): no torch to run it, no ONNX export (skl2onnx cannot convert the char_wb analyzer).
    static: --base distilled by model2vec into a token table (static_dims columns), then a
    logistic-regression head (slmforge.clf.static): NumPy only to run it, no ONNX export."""
    static_dims: int = 256
    """Columns of the --arch static table (PCA of the encoder's)."""
    base: str = "minilm-l6"
    """Encoder: catalog name, BERT-family dir or hub id."""
    val: str | None = None
    """Validation file (default: a stratified split).

    Without it a stratified val_fraction of data is held out (none in few-shot mode)."""
    val_fraction: float = 0.1
    """Share held out when there is no --val."""
    steps: int | None = None
    """Optimizer steps [default: 5 passes, 500 to 3000 steps].

    The default is 5 passes over the training set, raised to 500 or capped at 3000 steps; early stopping
    (see patience) may end it sooner; the best validation's weights are kept."""
    epochs: int | None = None
    """Passes over the training set instead of --steps.

    Validation then runs after every pass (unless --eval-every)."""
    eval_every: int | None = None
    """Steps between validations [default: a pass, or steps/10 if longer].

    And at least 5 validations in all: a pass longer than a fifth of the budget is not waited for."""
    lr: float = 1e-4
    """Top layer's learning rate (lower layers decay from it).

    Each layer below gets layer_decay times the one above."""
    head_lr: float = 5e-4
    """Learning rate of the classification head."""
    layer_decay: float = 0.9
    """Learning-rate factor per layer downwards."""
    batch_size: int = 32
    """Texts per training batch."""
    max_len: int = 64
    """Tokens per text (longer ones are truncated).

    Batches are padded only to their longest text."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy loss."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_fraction: float = 0.06
    """Share of the training steps spent warming the learning rate up."""
    head_init: str = "lr"
    """lr (from frozen embeddings) or random.

    lr starts from a logistic regression fitted on frozen embeddings; random from a fresh head."""
    few_shot: bool = False
    """Contrastive pair training, then a logistic-regression head.

    For about 5-20 examples per class; also chosen when the rarest label has fewer than few_shot_below. No
    validation split is taken from the training data in this mode (only --val validates)."""
    few_shot_below: int = 16
    """Few-shot mode when the rarest label has fewer examples (0: never)."""
    few_shot_steps: int = 150
    """Contrastive batches (--few-shot)."""
    few_shot_lr: float = 2e-5
    """Learning rate of the contrastive pair training (--few-shot)."""
    oos: bool = False
    """Calibrate an out-of-scope threshold: label `oos`.

    The threshold is calibrated on the validation split; `predict` answers `oos` below it."""
    oos_score: str = "maxprob"
    """maxprob or energy.

    maxprob: the highest softmax probability; energy: the logsumexp of the logits."""
    oos_val_flag_rate: float = 0.03
    """Share of in-scope val texts the threshold may flag."""
    min_per_class: int = 2
    """Refuse labels with fewer examples."""
    patience: int = 3
    """Validations without improvement before stopping.

    Improvement: a better validation accuracy."""
    max_minutes: float | None = None
    """Stop fine-tuning after this.

    The best validation so far is kept."""
    ship_baseline: bool = True
    """Ship a classical baseline that beats the fine-tuned model on val.

    The baselines, scored on the same validation split: the TF-IDF model (--arch tfidf) and the frozen
    encoder with a logistic-regression head. The run says which it ships and why."""
    strict: bool = False
    """Refuse (exit 2) instead of shipping a baseline."""
    encoding: str = "utf-8"
    """Text encoding of the data files."""
    seed: int = 0
    """Seed of the split, the head and the training order."""
    threads: int | None = None
    """Compute threads [default: the free cores, never more]."""
    overwrite: bool = False
    """Replace --out if it exists."""


@dataclass
class TokenTrainConfig:
    data: str
    """Training file: .jsonl of {"text", "entities": [{"start", "end", "label"}]}.

    Character spans, end exclusive, not overlapping (benchmarks/data/entities has examples)."""
    out: str
    """Model directory to write."""
    text_col: str = "text"
    """Column / field holding the text."""
    entities_col: str = "entities"
    """Field holding the entity spans."""
    labels: list[str] | None = None
    """Entity labels to learn (default: every label in the data).

    Given, a span with any other label is refused."""
    base: str = "minilm-l6"
    """Encoder: catalog name, BERT-family dir or hub id."""
    val: str | None = None
    """Validation file (default: a seeded split of data).

    Without it a seeded val_fraction of the sentences is held out."""
    val_fraction: float = 0.1
    """Share held out when there is no --val."""
    epochs: int = 20
    """Fine-tuning epochs (at most; see patience)."""
    lr: float = 2e-4
    """Top layer's learning rate (lower layers decay from it).

    Each layer below gets layer_decay times the one above."""
    head_lr: float = 1e-3
    """Learning rate of the tagging head."""
    layer_decay: float = 0.9
    """Learning-rate factor per layer downwards."""
    batch_size: int = 16
    """Sentences per training batch."""
    max_len: int = 128
    """Tokens per training sentence (longer ones are truncated).

    Prediction reads longer texts in overlapping windows of this length."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_fraction: float = 0.06
    """Share of the training steps spent warming the learning rate up."""
    patience: int = 4
    """Epochs without improvement before stopping.

    Improvement: a better validation micro-F1 (exact spans)."""
    max_minutes: float | None = None
    """Stop fine-tuning after this.

    The best epoch so far is kept."""
    encoding: str = "utf-8"
    """Text encoding of the data files."""
    seed: int = 0
    """Seed of the split, the head and the training order."""
    threads: int | None = None
    """Compute threads [default: the free cores, never more]."""
    overwrite: bool = False
    """Replace --out if it exists."""


@dataclass
class CompressConfig:
    teacher: str
    """A classifier dir from `slm classify train`."""
    data: str
    """The labelled training file (the teacher's)."""
    out: str
    """Model directory to write."""
    student: str | None = None
    """The student encoder (default minilm-l6).

    A catalog name or dir; None = a copy of the teacher (what `slm prune` does)."""
    layers: int | None = None
    """Encoder layers to keep (evenly spaced).

    Of the student (for `slm prune` a copy of the teacher); first and last kept; None = all."""
    trim_vocab: bool = True
    """Keep only tokens the data uses."""
    unlabeled: str | None = None
    """Extra texts (.txt lines, .csv/.jsonl) for the teacher.

    One per line (.txt) or in the text column (.csv/.jsonl), taught by the teacher only."""
    epochs: int = 3
    """Healing / distillation epochs."""
    lr: float = 1e-4
    """Peak learning rate."""
    head_lr: float = 5e-4
    """Learning rate of the classification head."""
    batch_size: int = 32
    """Texts per training batch."""
    temperature: float = 2.0
    """Softmax temperature of the distillation loss."""
    alpha: float = 0.5
    """Weight of the distillation loss (the rest: labels)."""
    text_col: str | None = None
    """Column / field holding the text (default: the teacher's)."""
    label_col: str | None = None
    """Column / field holding the label (default: the teacher's)."""
    patience: int = 2
    """Epochs without improvement before stopping."""
    seed: int = 0
    """Seed of the head and the training order."""
    threads: int | None = None
    """Compute threads [default: the free cores, never more]."""
    overwrite: bool = False
    """Replace --out if it exists."""
