"""What a served model version is: its reference, the floor verdict it carries, the scores it stamps, its loader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.model import JointRewardModel

Loader = Callable[..., Any]  # loader(path, *, device) -> a model with .processor and .score(batch)


class NoScorerYet(RuntimeError):
    """No model version is serving yet; the message is meant for users."""


@dataclass(frozen=True)
class ScoredItem:
    """One score and the version that computed it (`candidate_id` is None for uploads)."""

    candidate_id: int | None
    score: float
    version_id: int
    version_name: str
    passed_floor: bool | None = None  # that version's floor verdict (`floor_verdict`); None: never checked


@dataclass(frozen=True)
class ServedVersion:
    """The version now serving: id, name and its floor verdict (`floor_verdict`)."""

    version_id: int
    name: str
    passed_floor: bool | None


@dataclass(frozen=True)
class Serving:
    """The model now answering requests; replaced as a whole, never mutated."""

    version_id: int
    name: str
    model: Any
    passed_floor: bool | None = None


def floor_verdict(metrics: object) -> bool | None:
    """`metrics["gate"]["passed_floor"]` of a version: True or False, or None when it has none (gated before the floor
    existed, promoted by hand, or malformed)."""
    gate = metrics.get("gate") if isinstance(metrics, dict) else None
    verdict = gate.get("passed_floor") if isinstance(gate, dict) else None
    return verdict if isinstance(verdict, bool) else None


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_serving(path: Path, *, device: str) -> JointRewardModel:
    """The default loader: a saved JRM in eval mode, its LM head dropped before it moves to `device`."""
    return JointRewardModel.load(path, device=device, lm_head=False)


def stamp(candidate_id: int | None, score: float, serving: Serving) -> ScoredItem:
    """`score` as a `ScoredItem` stamped with the version (and its floor verdict) that computed it."""
    return ScoredItem(candidate_id, float(score), serving.version_id, serving.name, serving.passed_floor)
