"""Progress bars with rate and ETA for every long job (rich, on stderr), and `quiet_hf` for the third-party noise."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

stderr = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._p, self._t = progress, task

    def advance(self, n: float = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)

    def update(self, **kw) -> None:
        if self._p is not None:
            self._p.update(self._t, **kw)

    def print(self, *args, **kw) -> None:
        (self._p.console if self._p is not None else stderr).print(*args, **kw)


@contextlib.contextmanager
def bar(description: str, total: float | None, unit: str = "it", enabled: bool = True) -> Iterator[_Bar]:
    """A rich progress bar (count or bytes, rate, elapsed, ETA); a silent stand-in when disabled."""
    if not enabled:
        yield _Bar(None, None)
        return
    rate = TransferSpeedColumn() if unit == "B" else TextColumn("{task.fields[rate]}")
    count = TaskProgressColumn() if unit == "B" else MofNCompleteColumn()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        count,
        rate,
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
    ) as p:
        task = p.add_task(description, total=total, rate="")
        yield _Bar(p, task)


def say(enabled: bool, text: str) -> None:
    """One line of progress news on stderr (rich markup allowed), only when `enabled`."""
    if enabled:
        stderr.print(text, highlight=False)


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """No transformers progress bars for second-long loads and saves, no PEFT/transformers deprecation noise."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
