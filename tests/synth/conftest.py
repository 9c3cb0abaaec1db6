"""A tiny reST corpus (one API entry per document, each made to trip one filter of `slm synth`), the
canned teacher replies that go with it, and the dataset and index built from it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from slmforge.synth.configs import SynthConfig


def make_doc(name: str, signature: str, body: str) -> str:
    title = f"widgets --- Widget toolkit, part {name}"
    return (
        f"{title}\n{'=' * len(title)}\n\n.. function:: {signature}\n\n"
        + textwrap.indent(textwrap.fill(" ".join(body.split()), 76), "   ")
        + "\n"
    )


DOCS = {
    "alpha": make_doc("alpha", "spin_alpha(speed, *, clockwise=True)",
                  "Rotate the alpha widget at the given speed, in turns per second. When clockwise is false "
                  "the widget turns the other way. A speed of zero stops the widget, and a negative speed "
                  "raises ValueError."),
    "beta": make_doc("beta", "paint_beta(colour)",
                 "Paint the beta widget with the colour given as a hex string such as ff0000. The old colour "
                 "is kept in the undo history, so undo_beta() restores it; an invalid string raises "
                 "ColourError and leaves the widget unchanged."),
    "gamma": make_doc("gamma", "hide_gamma(fade=0.0)",
                  "Hide the gamma widget from the window. With fade above zero the widget fades out over that "
                  "many seconds instead of vanishing at once; a hidden widget still takes events unless "
                  "disable_gamma() is called as well."),
    "delta": make_doc("delta", "label_delta(text, *, bold=False)",
                  "Set the caption shown under the delta widget to text. Long captions wrap at the widget's "
                  "width. With bold true the caption is drawn in a heavy font, which needs a font family that "
                  "has one installed."),
    "epsilon": make_doc("epsilon", "dock_epsilon(edge)",
                    "Attach the epsilon widget to one edge of its window: top, bottom, left or right. A docked "
                    "widget keeps its place when the window is resized, and undock_epsilon() lets it float "
                    "freely again."),
    "zeta": make_doc("zeta", "blink_zeta(times=3)",
                 "Make the zeta widget flash on and off the given number of times to draw the user's eye. "
                 "Each flash lasts a quarter of a second; blinking stops early when the user clicks the "
                 "widget or presses a key."),
    "eta": make_doc("eta", "resize_eta(width, height, *, keep_ratio=False)",
                "Resize the eta widget to width by height pixels. With keep_ratio true the aspect ratio is "
                "kept and the larger side is reduced to fit; sizes below one pixel raise ValueError at once "
                "and the old size stays."),
    "theta": make_doc("theta", "grow_theta(factor, keep_ratio=True)",
                  "Scale the theta panel by factor, which must be positive. The panel keeps its aspect ratio "
                  "unless keep_ratio is false, and its children are laid out again after the resize is done, "
                  "in the order they were added."),
}  # fmt: skip
SHORT = "widgets --- Short\n=================\n\nA note too short to ask about.\n"
CODE = "widgets --- Examples\n====================\n\nExample::\n\n" + "".join(
    f"   >>> w{i} = widgets.make_widget({i}, size={i * 10})\n" for i in range(12)
)

REPLIES = {
    "spin_alpha": "Question: How can I make the alpha widget turn the other way round?\n"
    "Answer: Call widgets.spin_alpha(speed, clockwise=False) to rotate the alpha widget the other way.",
    "paint_beta": "Question: How do I paint the beta widget with the colour given as a hex string?\n"
    "Answer: Call widgets.paint_beta(colour) with a hex string such as ff0000.",
    "hide_gamma": "Question: How can I make the gamma widget go away slowly?\n"
    "Answer: Use widgets.teleport(destination) with the quantum flux engine enabled.",
    "label_delta": "Question: Why?\nAnswer: Call widgets.label_delta(text) to set the caption.",
    "dock_epsilon": "Sorry, I can only chat about widgets in general.",
    "blink_zeta": ("Question: How do I get the user to notice the zeta widget?\nAnswer: Call widgets.blink", "length"),
    "resize_eta": "Question: What should I call to make a widget bigger but keep its proportions?\n"
    "Answer: Call widgets.resize_eta(width, height, keep_ratio=True); the aspect ratio is kept.",
    "grow_theta": "Question: What should I call to make a widget bigger but keep its proportions?\n"
    "Answer: Call widgets.grow_theta(factor); the panel keeps its aspect ratio.",
}  # fmt: skip
# what each document's reply is dropped for (None: kept; eta/theta: the second of them is a near duplicate)
EXPECTED = {"alpha": None, "beta": "copied_wording", "gamma": "unsupported", "delta": "length",
            "epsilon": "unparseable", "zeta": "truncated"}  # fmt: skip


def write_docs(root: Path, names=None, extra: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names or DOCS:
        (root / f"{name}.rst").write_text(DOCS[name], encoding="utf-8")
    if extra:
        (root / "short.rst").write_text(SHORT, encoding="utf-8")
        (root / "code.rst").write_text(CODE, encoding="utf-8")
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    """An `slm data ingest` dataset of the corpus (8 usable documents, one too short, one mostly code)."""
    from slmforge.data.ingest import IngestConfig, ingest

    out = tmp_path / "ds"
    ingest(
        IngestConfig(paths=[str(write_docs(tmp_path / "docs"))], out=str(out), val_fraction=0.0),
        progress=False,
    )
    return out


def config(source, out, url: str, **kw) -> SynthConfig:
    kw.setdefault("n", 8)
    kw.setdefault("unanswerable_share", 0.0)
    kw.setdefault("batch_size", 1)
    return SynthConfig(source=str(source), out=str(out), teacher="fake", teacher_url=url, **kw)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
