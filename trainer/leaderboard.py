"""The leaderboard of editing models (generators): Bradley–Terry strengths from human votes, bootstrap intervals,
and the mean score of each generator's candidates under a model version.

Model: P(i beats j) = σ(θ_i − θ_j), θ the log-strength. A vote between candidates of generators a ≠ b adds 1 to
W[a, b] when a won; `tie` and `both_bad` add ½ to W[a, b] and ½ to W[b, a]: "both bad" says neither edit is
better, the same reading the trainer's tie-aware loss gives it (nothing is dropped). Votes between two candidates
of the same generator say nothing about generators and are left out of strengths and counts.

Fit: maximise Σ W_ij log σ(θ_i − θ_j) − (λ/2)‖θ‖² with λ = `PRIOR` by Newton's method (steps capped at
`MAX_STEP`). The prior keeps a generator that never loses finite and makes the objective strictly concave, so
the fit is unique even when the comparison graph is split. Summing the gradient over generators leaves λ·Σθ = 0
at the optimum, so the mean log-strength is 0 by construction (re-centred anyway against rounding). Newton needs
a handful of iterations where Hunter's (2004) MM needs hundreds on lopsided data, and batches over resamples.

Intervals: 95% percentile bootstrap that resamples *tasks* with replacement (a task's votes share the source
image and instruction, so they move together), refitting all resamples at once as one batched Newton solve.
A generator absent from a resample gets no value there. Cost: O(votes) per resample plus O(G³) per Newton step.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from storage.errors import InvalidInput
from storage.models import Candidate, Score, Vote
from storage.provenance import ALL_VOTES, VoteSelection
from trainer.registry import get_version

PRIOR = 0.1  # λ: a N(0, 10) prior on log-strengths, negligible once a generator has a few dozen votes
MAX_STEP = 5.0  # largest change of any θ in one Newton step
MAX_ITER = 100
TOLERANCE = 1e-10
LEVEL = 0.95
POINTS = {"left": 1.0, "right": 0.0, "tie": 0.5, "both_bad": 0.5}  # the left candidate's share of the win


@dataclass(frozen=True)
class LeaderboardRow:
    """One generator: strength (log, mean 0) with its interval, vote counts, and its mean model score."""

    generator: str
    strength: float | None  # None: no votes against another generator
    ci_low: float | None
    ci_high: float | None
    wins: int
    losses: int
    ties: int  # tie and both_bad votes
    n_votes: int
    mean_score: float | None  # mean score of its candidates under the version; None if none scored
    n_scored: int


@dataclass(frozen=True)
class VoteTable:
    """Votes between two different generators, as arrays over `generators` (indices into it)."""

    generators: list[str]
    task: np.ndarray  # (V,) task index, 0..T-1
    first: np.ndarray  # (V,) generator index of the left candidate
    second: np.ndarray  # (V,) generator index of the right candidate
    points: np.ndarray  # (V,) the left generator's share: 1 win, 0 loss, ½ tie or both bad

    @classmethod
    def from_votes(cls, votes: list[tuple[object, str, str, str]]) -> VoteTable:
        """From (task key, left generator, right generator, choice) tuples; same-generator votes are dropped."""
        kept = [v for v in votes if v[1] != v[2]]
        generators = sorted({g for v in kept for g in v[1:3]})
        index = {g: i for i, g in enumerate(generators)}
        tasks = {t: i for i, t in enumerate(dict.fromkeys(v[0] for v in kept))}
        return cls(
            generators=generators,
            task=np.array([tasks[v[0]] for v in kept], dtype=np.int64),
            first=np.array([index[v[1]] for v in kept], dtype=np.int64),
            second=np.array([index[v[2]] for v in kept], dtype=np.int64),
            points=np.array([POINTS[v[3]] for v in kept], dtype=np.float64),
        )

    @property
    def n_tasks(self) -> int:
        return int(self.task.max()) + 1 if len(self.task) else 0


def win_matrix(table: VoteTable, vote_weights: np.ndarray | None = None) -> np.ndarray:
    """W (G, G): W[i, j] = (weighted) wins of i over j, ties counting ½ each way."""
    g = len(table.generators)
    weights = np.ones(len(table.points)) if vote_weights is None else vote_weights
    won = np.bincount(table.first * g + table.second, weights=weights * table.points, minlength=g * g)
    lost = np.bincount(table.second * g + table.first, weights=weights * (1 - table.points), minlength=g * g)
    return (won + lost).reshape(g, g)


def bradley_terry(wins: np.ndarray, *, prior: float = PRIOR) -> np.ndarray:
    """Log-strengths θ (..., G) maximising the penalised BT likelihood of wins (..., G, G), mean 0 per fit."""
    if prior <= 0:
        raise ValueError(f"prior must be > 0 (it keeps unbeaten generators finite), got {prior}.")
    games = wins + np.swapaxes(wins, -1, -2)  # (..., G, G) comparisons between i and j
    won = wins.sum(-1)  # (..., G)
    theta = np.zeros(wins.shape[:-1])  # (..., G)
    eye = np.eye(wins.shape[-1])
    for _ in range(MAX_ITER):
        p = 1 / (1 + np.exp(theta[..., None, :] - theta[..., :, None]))  # (..., G, G) P(i beats j)
        grad = won - (games * p).sum(-1) - prior * theta  # (..., G)
        curvature = games * p * (1 - p)  # (..., G, G)
        hessian = curvature - eye * (curvature.sum(-1) + prior)[..., None, :]  # negative definite
        step = np.linalg.solve(hessian, -grad[..., None])[..., 0]  # (..., G)
        largest = np.abs(step).max(-1, keepdims=True)
        step *= np.minimum(1.0, MAX_STEP / np.maximum(largest, 1e-300))
        theta = theta + step
        if largest.max() < TOLERANCE:
            break
    return theta - theta.mean(-1, keepdims=True)


def bootstrap_strengths(table: VoteTable, *, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, G) strengths refitted on task-resampled votes; NaN where a generator had no vote."""
    rng = np.random.default_rng(seed)
    n_tasks = table.n_tasks
    counts = rng.multinomial(n_tasks, np.full(n_tasks, 1 / n_tasks), size=n_bootstrap)  # (B, T) task draws
    wins = np.stack([win_matrix(table, counts[b, table.task].astype(np.float64)) for b in range(n_bootstrap)])
    present = (wins + np.swapaxes(wins, -1, -2)).sum(-1) > 0  # (B, G)
    theta = bradley_terry(wins)  # (B, G)
    # Absent generators sit at 0 and take part in the mean: re-centre over the present ones only.
    mean = np.where(present, theta, 0).sum(-1, keepdims=True) / np.maximum(present.sum(-1, keepdims=True), 1)
    return np.where(present, theta - mean, np.nan)


def intervals(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bounds (G,) of bootstrap samples (B, G), ignoring NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN bounds
        low, high = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return low, high


def leaderboard(
    session: Session,
    *,
    version_id: int | None,
    n_bootstrap: int = 200,
    seed: int = 0,
    selection: VoteSelection = ALL_VOTES,
) -> list[LeaderboardRow]:
    """Every generator, strongest first (no votes last), with counts of the selected votes and mean scores under
    `version_id`."""
    _check_arguments(version_id, n_bootstrap, seed)
    return rank(read_inputs(session, version_id=version_id, selection=selection), n_bootstrap=n_bootstrap, seed=seed)


@dataclass(frozen=True)
class LeaderboardInputs:
    """What the fit needs from the store, read in one go so the fit and its resampling run with no session open."""

    table: VoteTable
    generators: list[str]  # every generator in the store, voted on or not
    scores: dict[str, tuple[float, int]]  # generator → (mean score, candidates scored) under the version


def read_inputs(session: Session, *, version_id: int | None, selection: VoteSelection = ALL_VOTES) -> LeaderboardInputs:
    """The selected votes between generators, the generators, and their mean scores under `version_id`."""
    if version_id is not None:
        get_version(session, version_id=version_id)  # NotFound for an unknown version
    table = VoteTable.from_votes(_vote_rows(session, selection))
    return LeaderboardInputs(table, _all_generators(session, table), _mean_scores(session, version_id))


def rank(inputs: LeaderboardInputs, *, n_bootstrap: int = 200, seed: int = 0) -> list[LeaderboardRow]:
    """Every generator, strongest first (no votes last): the fit, its bootstrap intervals, counts, mean scores."""
    table, scores = inputs.table, inputs.scores
    strengths, low, high = _fit(table, n_bootstrap=n_bootstrap, seed=seed)
    counts = _counts(table)
    rows = []
    for generator in inputs.generators:
        i = table.generators.index(generator) if generator in table.generators else None
        wins, losses, ties = counts[i] if i is not None else (0, 0, 0)
        mean_score, n_scored = scores.get(generator, (None, 0))
        rows.append(
            LeaderboardRow(
                generator=generator,
                strength=_value(strengths, i),
                ci_low=_value(low, i),
                ci_high=_value(high, i),
                wins=wins,
                losses=losses,
                ties=ties,
                n_votes=wins + losses + ties,
                mean_score=mean_score,
                n_scored=n_scored,
            )
        )
    return sorted(rows, key=lambda r: (r.strength is None, -(r.strength or 0.0), r.generator))


def _check_arguments(version_id: object, n_bootstrap: object, seed: object) -> None:
    if version_id is not None and (isinstance(version_id, bool) or not isinstance(version_id, int)):
        raise InvalidInput(f"version_id must be a model version id or None, got {version_id!r}.")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or not 0 <= n_bootstrap <= 100_000:
        raise InvalidInput(f"n_bootstrap must be a whole number from 0 (no intervals) to 100000, got {n_bootstrap!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput(f"seed must be a whole number, got {seed!r}.")


def _fit(table: VoteTable, *, n_bootstrap: int, seed: int) -> tuple[np.ndarray | None, ...]:
    """Point strengths and interval bounds (G,) each; None when there is nothing to fit or resample."""
    if not table.generators:
        return None, None, None
    strengths = bradley_terry(win_matrix(table))
    if n_bootstrap == 0:
        return strengths, None, None
    return strengths, *intervals(bootstrap_strengths(table, n_bootstrap=n_bootstrap, seed=seed))


def _value(values: np.ndarray | None, index: int | None) -> float | None:
    if values is None or index is None or not math.isfinite(values[index]):
        return None
    return float(values[index])


def _counts(table: VoteTable) -> list[tuple[int, int, int]]:
    """(wins, losses, ties) per generator index."""
    g = len(table.generators)
    tie = table.points == 0.5
    left_won, right_won = table.points == 1.0, table.points == 0.0
    wins = np.bincount(table.first[left_won], minlength=g) + np.bincount(table.second[right_won], minlength=g)
    losses = np.bincount(table.first[right_won], minlength=g) + np.bincount(table.second[left_won], minlength=g)
    ties = np.bincount(table.first[tie], minlength=g) + np.bincount(table.second[tie], minlength=g)
    return [(int(w), int(lo), int(t)) for w, lo, t in zip(wins, losses, ties, strict=True)]


def _vote_rows(session: Session, selection: VoteSelection) -> list[tuple[int, str, str, str]]:
    left, right = aliased(Candidate), aliased(Candidate)
    query = (
        select(Vote.task_id, left.generator, right.generator, Vote.choice)
        .join(left, left.id == Vote.left_candidate_id)
        .join(right, right.id == Vote.right_candidate_id)
        .where(*selection.where())
    )
    return [tuple(row) for row in session.execute(query)]


def _all_generators(session: Session, table: VoteTable) -> list[str]:
    stored = session.scalars(select(Candidate.generator).distinct())
    return sorted(set(stored) | set(table.generators))


def _mean_scores(session: Session, version_id: int | None) -> dict[str, tuple[float, int]]:
    """generator → (mean score, candidates scored) under `version_id`."""
    if version_id is None:
        return {}
    query = (
        select(Candidate.generator, func.avg(Score.score), func.count(Score.id))
        .join(Candidate, Candidate.id == Score.candidate_id)
        .where(Score.version_id == version_id)
        .group_by(Candidate.generator)
    )
    return {generator: (float(mean), int(n)) for generator, mean, n in session.execute(query)}
