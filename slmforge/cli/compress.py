"""`slm prune` (classifiers) and `slm distill` (classifiers or causal LMs, told apart by the teacher).

`slm distill` takes the options of both families' configs, CompressConfig and DistillLMConfig; the
teacher picks the family, and a flag that only the other family's config has is refused.
"""

from __future__ import annotations

import typer

from slmforge.cli.options import Flags, Opts, options
from slmforge.cli.render import table
from slmforge.core.errors import SlmError

COMPRESS = "slmforge.clf.configs:CompressConfig"
NOT_ON_THE_CLI = ("head_lr", "batch_size", "text_col", "label_col", "patience", "seed")  # CompressConfig's
CLASSIFIER = Opts(COMPRESS, family="classifier", short={"out": "-o"}, exclude=("teacher", *NOT_ON_THE_CLI))
CAUSAL_LM = Opts(
    "slmforge.lm.configs:DistillLMConfig",
    family="causal LM",
    short={"out": "-o"},
    exclude=("teacher", "teacher_precision", "max_steps", "grad_accum", "kl_examples", "eval_every",
             "checkpoint_every", "log_every", "precision", "device"),
)  # fmt: skip


@options(
    Opts(COMPRESS, args=("teacher",), short={"out": "-o"}, defaults={"layers": 3},
         exclude=("student", *NOT_ON_THE_CLI))
)  # fmt: skip
def prune_cmd(cfg) -> None:
    """Prune a classifier (drop layers, trim the vocabulary), then heal it by distillation from itself."""
    from slmforge.clf.compress import prune

    show_compressed("prune", prune(cfg))


@options(CAUSAL_LM, CLASSIFIER)
def distill_cmd(
    flags: Flags,
    teacher_arg: str | None = typer.Argument(
        None,
        metavar="TEACHER",
        help="The teacher: a classifier dir from `slm classify train`, or a causal LM (catalog name, dir, "
        "hub id).",
    ),
    teacher_opt: str | None = typer.Option(None, "--teacher", help="The teacher, as an option."),
) -> None:
    """Distil a teacher into a smaller student: a classifier's logits into a student encoder (optionally
    with unlabeled texts), or a causal LM into a smaller causal LM (logit or sequence-level).

    Causal LM: writes the run directory --out with model/ (plain transformers, chat template and EOS), the
    metrics and checkpoints of `slm finetune`, and the KL to the teacher before and after.
    """
    if teacher_arg and teacher_opt and teacher_arg != teacher_opt:
        raise SlmError(f"two teachers given ({teacher_arg} and --teacher {teacher_opt}); give one")
    teacher = teacher_arg or teacher_opt
    if not teacher:
        raise SlmError("give the teacher: slm distill TEACHER ... or --teacher TEACHER")
    from slmforge.lm.evaluate import is_causal_lm

    if not is_causal_lm(teacher):
        stray = flags.stray("classifier")
        if stray:
            raise SlmError(f"{', '.join(stray)} apply to causal-LM teachers; {teacher} is a classifier")
        from slmforge.clf.compress import distill

        cfg = flags.config("classifier", teacher=teacher, student=flags["student"] or "minilm-l6")
        show_compressed("distill", distill(cfg))
        return
    stray = flags.stray("causal LM")
    if stray:
        raise SlmError(
            f"{', '.join(stray)} apply to classifier teachers; {teacher} is a causal LM (a smaller student: "
            "--student-depth N)"
        )
    from slmforge.lm.distill import distill_lm

    r = distill_lm(flags.config("causal LM", teacher=teacher))
    rows = {
        "method": r.method,
        "student": f"{r.student_layers} layers, {r.student_params / 1e6:.2f}M parameters"
        + (f" ({r.student_params / r.teacher_params:.0%} of the teacher)" if r.teacher_params else ""),
        "steps": r.steps,
        "loss": f"{r.first_loss:.4f} → {r.train_loss:.4f}",
    }
    if r.kl_before is not None:
        rows["KL to the teacher"] = f"{r.kl_before:.4f} → {r.kl_after:.4f}"
    if r.teacher_data:
        rows["teacher completions"] = f"{r.completions} in {r.teacher_data}"
    if r.val:
        rows["val loss"] = f"{r.val['loss']:.4f}"
    rows["time"] = f"{r.elapsed_s:.0f}s"
    rows["saved"] = r.model_dir
    table("distill", rows)


def show_compressed(kind: str, m: dict) -> None:
    """The table of a pruned or distilled classifier."""
    table(
        kind,
        {
            "model": m["out"],
            "params": f"{m['params'] / 1e6:.2f}M ({m['params_vs_teacher'] * 100:.0f} % of the teacher)",
            "layers / vocab": f"{m['layers']} / {m['vocab_size']:,}",
            "val accuracy": f"{m['val_accuracy']:.4f} (teacher {m['teacher_val_accuracy']:.4f})",
            "best epoch": f"{m['best_epoch']} of {m['epochs_run']}",
            "time": f"{m['train_seconds']:.0f}s",
        },
    )
