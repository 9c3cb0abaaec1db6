"""Where slmforge keeps things: the workspace directory (`$SLMFORGE_HOME`, default `~/.slmforge`) and the
name of the manifest every artifact directory carries. Below both fsutil (which refuses to replace the
workspace) and workspace (which lives there), so neither imports the other to find it."""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST = "slmforge.json"


def home() -> Path:
    return Path(os.environ.get("SLMFORGE_HOME", Path.home() / ".slmforge")).expanduser()
