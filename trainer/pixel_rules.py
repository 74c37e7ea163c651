"""Pixel-statistics rules: preferences that need no model, read off the images — the promotion gate's floor.

A rule takes one number per candidate (from the edited image and its source) and prefers the candidate with the
higher number, e.g. "changed more wins" (mean |edited − source|). A scorer that cannot beat the best of these on
the held-out votes has learnt nothing a one-line heuristic would not give. Pictures are compared at 64 × 64
(resized bilinearly; a crop or rotation changes the size), RGB in [0, 1], so a rule costs microseconds per image.
The list is short on purpose: the floor is the best rule on the very votes being judged, so every rule added
raises it by selection alone (a stricter floor, never a laxer one). numpy and PIL only: no model, and nothing
from the demo simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from trainer.evaluate import EvalPair

SIDE = 64  # pictures are compared at SIDE × SIDE
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


@dataclass(frozen=True)
class EditStatistics:
    """What the rules read off one candidate: how much it changed its source, and three looks of the edit alone."""

    change: float  # mean |edited − source| over pixels and channels, in [0, 1]
    brightness: float  # mean luma, in [0, 1]
    sharpness: float  # mean |horizontal and vertical luma differences|
    colourfulness: float  # mean over pixels of (max − min channel)


# name → (statistic, sign): the candidate with the larger sign × statistic wins. Every statistic in both directions:
# neither is less naive than the other, and which one a data set rewards is not known in advance.
RULES: dict[str, tuple[str, int]] = {
    "changed more wins": ("change", 1),
    "closer to the source wins": ("change", -1),
    "brighter wins": ("brightness", 1),
    "darker wins": ("brightness", -1),
    "sharper wins": ("sharpness", 1),
    "smoother wins": ("sharpness", -1),
    "more colourful wins": ("colourfulness", 1),
    "less colourful wins": ("colourfulness", -1),
}


def pixels(image: Image.Image) -> np.ndarray:
    """(SIDE, SIDE, 3) float32 RGB in [0, 1]."""
    small = image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32) / 255.0


def edit_statistics(source: np.ndarray, edited: np.ndarray) -> EditStatistics:
    """The statistics of `edited` (and of its change from `source`), both as `pixels` gives them."""
    luma = edited @ _LUMA  # (SIDE, SIDE)
    gradient = np.abs(np.diff(luma, axis=0)).mean() + np.abs(np.diff(luma, axis=1)).mean()
    return EditStatistics(
        change=float(np.abs(edited - source).mean()),
        brightness=float(luma.mean()),
        sharpness=float(gradient),
        colourfulness=float((edited.max(axis=2) - edited.min(axis=2)).mean()),
    )


def rule_deltas(pairs: Sequence[EvalPair]) -> dict[str, np.ndarray]:
    """Per rule, (P,) its score of left minus right (> 0: the rule prefers left, 0: it cannot tell them apart)."""
    statistics = _memoised_statistics()
    left = [statistics(pair.source, pair.left) for pair in pairs]
    right = [statistics(pair.source, pair.right) for pair in pairs]
    return {
        name: np.array([sign * (getattr(a, stat) - getattr(b, stat)) for a, b in zip(left, right, strict=True)])
        for name, (stat, sign) in RULES.items()
    }


def _memoised_statistics() -> Callable[[Image.Image, Image.Image], EditStatistics]:
    """`edit_statistics` of (source, edited) pictures, each picture resized once (a source is in every pair of its
    task, a candidate in several pairs)."""
    arrays: dict[int, tuple[Image.Image, np.ndarray]] = {}  # id(image) → (image kept alive, pixels)
    results: dict[tuple[int, int], EditStatistics] = {}

    def array(image: Image.Image) -> np.ndarray:
        if id(image) not in arrays:
            arrays[id(image)] = (image, pixels(image))
        return arrays[id(image)][1]

    def statistics(source: Image.Image, edited: Image.Image) -> EditStatistics:
        key = (id(source), id(edited))
        if key not in results:
            results[key] = edit_statistics(array(source), array(edited))
        return results[key]

    return statistics
