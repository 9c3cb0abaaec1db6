"""The shared right-sizing Pareto plot: both callers write a PNG from a synthetic ladder table."""

from __future__ import annotations

from slmforge.ship.rightsize import classification as rightsize
from slmforge.ship.rightsize import generation as rightsize_gen

PNG = b"\x89PNG\r\n\x1a\n"


def test_classification_pareto_png(tmp_path):
    table = [
        {"rung": "base", "accuracy": 0.95, "p50_ms": 8.0, "disk_mb": 90.0, "params": 22e6, "meets": True},
        {"rung": "layers-1", "accuracy": 0.90, "p50_ms": 2.0, "disk_mb": 20.0, "params": 4e6, "meets": True},
        {
            "rung": "layers-1-int8",
            "accuracy": 0.6,
            "p50_ms": 1.0,
            "disk_mb": 5.0,
            "params": 4e6,
            "meets": False,
        },
    ]
    png = tmp_path / "pareto.png"
    rightsize.plot_pareto(table, table[1], png)
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000


def test_generation_pareto_png_skips_errors_and_missing_values(tmp_path):
    row = {"exact_match": 0.5, "p50_ms": 40.0, "params": 135e6, "meets": True}
    table = [
        {"rung": "big", "variant": "as-is", **row},
        {"rung": "big-3shot", "variant": "prompted", **row},  # same point: labels stack
        {
            "rung": "small-tuned",
            "variant": "tuned",
            **row,
            "exact_match": 0.2,
            "params": None,
            "meets": False,
        },
        {"rung": "broken", "variant": "as-is", "error": "failed to load", "meets": False},
    ]
    png = tmp_path / "pareto.png"
    rightsize_gen.plot_pareto(table, table[0], "exact_match", png)
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000
