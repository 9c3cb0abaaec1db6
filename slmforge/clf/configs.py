"""The classifier family's workflow configs: torch-free, so the CLI builds its options from them without loading torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClassifyTrainConfig:
    data: str
    """Training file: .csv (header row) or .jsonl (one object per line)."""
    out: str
    """Model directory to write."""
    text_col: str = "text"
    label_col: str = "label"
    base: str = "minilm-l6"
    """Encoder to start from: a catalog name, a local BERT-family directory or a hub id."""
    val: str | None = None
    """Validation file; without it a stratified `val_fraction` of `data` is held out."""
    val_fraction: float = 0.1
    epochs: int = 5
    lr: float = 1e-4
    """Peak learning rate of the top encoder layer; each layer below gets `layer_decay` times the one above."""
    head_lr: float = 5e-4
    layer_decay: float = 0.9
    batch_size: int = 32
    max_len: int = 64
    """Tokens per text (longer texts are truncated; batches are padded only to their longest text)."""
    label_smoothing: float = 0.1
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    head_init: str = "lr"
    """`lr`: start from a logistic regression fitted on frozen embeddings; `random`: a fresh head."""
    few_shot: bool = False
    """Contrastive pair training of the encoder, then a logistic-regression head (for ~5-20 examples/class)."""
    few_shot_steps: int = 150
    few_shot_lr: float = 2e-5
    oos: bool = False
    """Calibrate a confidence threshold on the validation split; `predict` answers `oos` below it."""
    oos_score: str = "maxprob"
    """`maxprob` (highest softmax probability) or `energy` (logsumexp of the logits)."""
    oos_val_flag_rate: float = 0.03
    """Share of in-scope validation texts the threshold may flag as `oos` (sets the threshold)."""
    min_per_class: int = 2
    """Refuse labels with fewer training examples than this."""
    patience: int = 2
    """Stop after this many epochs without a better validation accuracy."""
    max_minutes: float | None = None
    """Stop fine-tuning after this long (the best epoch so far is kept)."""
    encoding: str = "utf-8"
    seed: int = 0
    threads: int | None = None
    overwrite: bool = False


@dataclass
class CompressConfig:
    teacher: str
    """A classifier directory from `slm classify train`."""
    data: str
    """The labelled training file (the teacher's, normally)."""
    out: str
    student: str | None = None
    """Distill: the student encoder (catalog name or dir); None = a copy of the teacher (prune)."""
    layers: int | None = None
    """Keep this many encoder layers (evenly spaced, first and last kept); None = all."""
    trim_vocab: bool = True
    unlabeled: str | None = None
    """Extra texts, one per line (.txt) or in the text column (.csv/.jsonl), taught by the teacher only."""
    epochs: int = 3
    lr: float = 1e-4
    head_lr: float = 5e-4
    batch_size: int = 32
    temperature: float = 2.0
    alpha: float = 0.5
    """Weight of the distillation loss; 1 - alpha goes to the labels."""
    text_col: str | None = None
    label_col: str | None = None
    patience: int = 2
    seed: int = 0
    threads: int | None = None
    overwrite: bool = False
