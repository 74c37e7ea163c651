"""What a served model version is: its reference, the floor verdict it carries, the scores it stamps.

Versions are loaded by the one scorer loader, `trainer.scorer.load_scorer_model`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Loader = Callable[..., Any]  # loader(path, *, device) -> a model with .processor and .score_all(batch)
MAX_ERROR_CHARS = 300  # a load error as the page shows it (the log has it whole)


class NoScorerYet(RuntimeError):
    """No model version is serving yet; the message is meant for users."""


class VersionLoading(RuntimeError):
    """A pinned version is being loaded in the background; ask again in a moment."""


class VersionUnavailable(RuntimeError):
    """A pinned version exists but cannot be loaded (missing or corrupt files, a changed LoRA base); says why."""


@dataclass(frozen=True)
class ModelScore:
    """What the one forward gives for one item: the score μ, and σ and the dimension scores when the version has
    those heads (trainer/heads.py)."""

    score: float
    sigma: float | None = None
    dimensions: dict[str, float] | None = None


@dataclass(frozen=True)
class ScoredItem:
    """One score and the version that computed it (`candidate_id` is None for uploads)."""

    candidate_id: int | None
    score: float
    version_id: int
    version_name: str
    passed_floor: bool | None = None  # that version's floor verdict (`floor_verdict`); None: never checked
    model_sha256: str | None = None  # the version's files (`trainer.registry.files_sha256`)
    sigma: float | None = None  # σ of the score (the uncertainty head); None without one, or from the scores table
    dimensions: dict[str, float] | None = None  # per-dimension scores (the dimension heads); None likewise


@dataclass(frozen=True)
class ServedVersion:
    """The version now serving: id, name and its floor verdict (`floor_verdict`)."""

    version_id: int
    name: str
    passed_floor: bool | None


@dataclass(frozen=True)
class LoadFailure:
    """The active version's last failed load: which version, why, and when it first failed (UTC). Kept until that
    version loads or another one is active and serving."""

    version_id: int
    name: str
    error: str
    failed_at: datetime

    @property
    def short_error(self) -> str:
        """The error's first line, cut to `MAX_ERROR_CHARS` (what the page shows)."""
        first = (self.error.strip().splitlines() or [""])[0]
        return first if len(first) <= MAX_ERROR_CHARS else first[: MAX_ERROR_CHARS - 1] + "…"


@dataclass(frozen=True)
class ScorerStatus:
    """What serves now and whether the active version failed to load, read together from the service's memory."""

    served: ServedVersion | None
    failure: LoadFailure | None

    def problem(self, *, detail: bool = True) -> str | None:
        """The warning the app shows, e.g. "The active version v0005 failed to load at 18:40 UTC (…); still serving
        v0004."; None when nothing failed. `detail=False` leaves out the error (it may name server paths)."""
        failure = self.failure
        if failure is None:
            return None
        why = f" ({failure.short_error})" if detail else ""
        still = f"still serving {self.served.name}" if self.served is not None else "no scorer is serving"
        return f"The active version {failure.name} failed to load at {failure.failed_at:%H:%M} UTC{why}; {still}."


@dataclass(frozen=True)
class Serving:
    """The model now answering requests; replaced as a whole, never mutated."""

    version_id: int
    name: str
    model: Any
    passed_floor: bool | None = None
    model_sha256: str | None = None  # `trainer.registry.files_sha256` of the loaded folder


def floor_verdict(metrics: object) -> bool | None:
    """`metrics["gate"]["passed_floor"]` of a version: True or False, or None when it has none (gated before the floor
    existed, promoted by hand, or malformed)."""
    gate = metrics.get("gate") if isinstance(metrics, dict) else None
    verdict = gate.get("passed_floor") if isinstance(gate, dict) else None
    return verdict if isinstance(verdict, bool) else None


def stamp(candidate_id: int | None, score: float | ModelScore, serving: Serving) -> ScoredItem:
    """`score` (a bare float: from the scores table) as a `ScoredItem` stamped with the version (and its floor
    verdict) that computed it."""
    value = score if isinstance(score, ModelScore) else ModelScore(float(score))
    return ScoredItem(
        candidate_id,
        float(value.score),
        serving.version_id,
        serving.name,
        serving.passed_floor,
        serving.model_sha256,
        sigma=value.sigma,
        dimensions=value.dimensions,
    )
