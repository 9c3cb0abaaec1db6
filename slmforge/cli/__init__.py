"""The `slm` command: the app, its verbs in the order `slm --help` lists them, and the error policy.

Each verb is a thin adapter in a module of this package (one per verb group) that parses flags, calls one
typed workflow function and prints the result. The flags of a workflow verb are its config's fields
(`slmforge.cli.options`), so the verb body is `run(cfg)`. Heavy imports (torch, transformers) happen
inside the commands, so `import slmforge.cli` loads no torch and `slm --help` stays fast.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from slmforge.cli import clf, compress, data, finetune, lm, ls, quickstart, rag, rightsize, serve, ship, synth
from slmforge.cli.render import console
from slmforge.core.errors import SlmError

app = typer.Typer(
    help="slmforge: your documents in, a right-sized small language model out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("serve")(serve.serve)
app.command("audit")(serve.audit)
finetune.register(app)  # finetune, merge
app.command("pull")(lm.pull_cmd)
app.command("generate")(lm.generate_cmd)
app.command("chat")(lm.chat_cmd)
app.command("pretrain")(lm.pretrain)
app.command("export")(ship.export_cmd)
app.command("quantize")(ship.quantize_cmd)
app.command("prune")(compress.prune_cmd)
app.command("distill")(compress.distill_cmd)
app.command("rightsize")(rightsize.rightsize_cmd)
app.command("eval")(ship.eval_cmd)
app.command("quickstart")(quickstart.quickstart)
app.command("ls")(ls.ls)
app.add_typer(data.data_app, name="data")
app.add_typer(data.tokenizer_app, name="tokenizer")
app.add_typer(clf.classify_app, name="classify")
app.add_typer(rag.rag_app, name="rag")
app.command("synth")(synth.synth_cmd)
app.add_typer(serve.keys_app, name="keys")


def main() -> None:
    """Entry point: user errors become one red line and exit code 2, never a traceback."""
    # transformers' and huggingface_hub's own tqdm bars ("Loading weights", "Writing model shards") are noise
    # next to slmforge's progress bars; the variable is read when huggingface_hub is first imported, which
    # happens inside the commands, after this line
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app(standalone_mode=False)
    except SlmError as e:
        # the message quotes user input (a model name, a path): never read it as markup
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, markup=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", None)
        sys.exit(code if code is not None else getattr(e, "code", 0))
    except Exception as e:
        # click's usage errors (typer bundles its own click, so match by shape, not by class)
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        if os.environ.get("SLMFORGE_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        console.print(
            f"[red]error:[/red] unexpected {type(e).__name__}: {escape(first)} (SLMFORGE_DEBUG=1 shows the traceback)",
            highlight=False,
            markup=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
