"""The `slm` command: thin adapters that parse flags, call one typed workflow function, print results.

Every workflow is importable and callable from Python with the same dataclass config; heavy imports
(torch, transformers) happen inside the commands so `slm --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from slmforge.errors import SlmError

console = Console(stderr=True)
out = Console()

app = typer.Typer(
    help="slmforge: your documents in, a right-sized small language model out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Prepare training data.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train and inspect tokenizers.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(tokenizer_app, name="tokenizer")


def main() -> None:
    """Entry point: user errors become one red line and exit code 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except SlmError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, markup=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", None)
        sys.exit(code if code is not None else getattr(e, "code", 0))
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


# ---------------------------------------------------------------- data


# ---------------------------------------------------------------- tokenizer


# ---------------------------------------------------------------- models: pull, generate, chat


# ---------------------------------------------------------------- pretrain


# ---------------------------------------------------------------- workspace, quickstart


if __name__ == "__main__":
    main()
