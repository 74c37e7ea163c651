"""trainer.pixel_rules: the gate's model-free floor, on pictures whose statistics can be worked out by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.evaluate import EvalPair
from trainer.pixel_rules import RULES, edit_statistics, pixels, rule_deltas

ROOT = Path(__file__).resolve().parents[2]


def flat(value: int | tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, value if isinstance(value, tuple) else (value,) * 3)


def checkerboard(size: int = 64) -> Image.Image:
    """Black and white 1-pixel squares at exactly 64 × 64: no resampling blur."""
    board = (np.indices((size, size)).sum(axis=0) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([board] * 3, axis=2))


def test_statistics_of_flat_and_patterned_pictures():
    grey, white, red = pixels(flat(128)), pixels(flat(255, (90, 20))), pixels(flat((255, 0, 0)))
    unchanged, brighter = edit_statistics(grey, grey), edit_statistics(grey, white)
    assert (unchanged.change, unchanged.sharpness, unchanged.colourfulness) == (0, 0, 0)
    assert brighter.change == pytest.approx(127 / 255)  # |255 − 128| / 255 on every pixel and channel
    assert brighter.brightness == pytest.approx(1.0, abs=1e-6)  # luma weights sum to 1
    assert edit_statistics(grey, red).colourfulness == pytest.approx(1.0)  # max − min channel = 255 / 255
    # A 1-pixel checkerboard: every horizontal and vertical luma step is 1, so the two means sum to 2.
    assert edit_statistics(grey, pixels(checkerboard())).sharpness == pytest.approx(2.0)


def pair(left: Image.Image, right: Image.Image, label: str = "left") -> EvalPair:
    return EvalPair(task_id=1, task_key="k", instruction="brighten it", source=SOURCE, left=left, right=right,
                    label=label)  # fmt: skip


SOURCE = flat(128)


def test_rule_deltas_are_left_minus_right_signed_by_the_rule():
    # Left is the source unchanged, right is white: "changed more" and "brighter" prefer right (Δ < 0), their
    # opposites prefer left by the same amount; both are flat grey/white, so sharpness and colour cannot tell.
    deltas = rule_deltas([pair(SOURCE, flat(255)), pair(flat(255), flat(255))])
    assert set(deltas) == set(RULES)
    assert deltas["changed more wins"][0] == pytest.approx(-127 / 255)
    assert deltas["closer to the source wins"][0] == pytest.approx(127 / 255)
    assert deltas["brighter wins"][0] == pytest.approx(-127 / 255, abs=1e-6)
    assert deltas["darker wins"][0] == pytest.approx(127 / 255, abs=1e-6)
    assert all(deltas[name][0] == 0 for name in ("sharper wins", "smoother wins", "more colourful wins",
                                                   "less colourful wins"))  # fmt: skip
    assert all(delta[1] == 0 for delta in deltas.values())  # identical candidates: every rule ties


def test_the_gate_modules_do_not_import_the_demo_simulator():
    code = "import sys, trainer.gate, trainer.pixel_rules; print([m for m in sys.modules if 'demo' in m])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
