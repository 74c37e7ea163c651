"""Bootstrap resampling for the metrics: percentile intervals, and paired task resamples for the promotion gate.

`trainer.metrics` computes the statistics and asks here for their intervals; `trainer.gate` compares scorers on the
same task resamples (`paired_task_bootstrap`). Pure functions on plain arrays, seeded, no model and no database.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np


def bootstrap_ci(
    values: Any,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence[Hashable] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(values[resample])`, resampling whole clusters when given.

    For a metric of several arrays, pass `np.arange(n)` as `values` and a statistic of the index array, e.g.
    `bootstrap_ci(np.arange(n), lambda i: pairwise_accuracy(delta[i], labels[i]), clusters=task_ids)`.
    NaN statistics are ignored; (nan, nan) when every resample is NaN or there is nothing to resample.
    """
    if not 0 < level < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < level < 1 and n_resamples >= 1, got level={level}, n_resamples={n_resamples}")
    v = np.asarray(values)
    if len(v) == 0:
        return math.nan, math.nan
    resample = _resampler(len(v), clusters, np.random.default_rng(seed))
    stats = np.array([statistic(v[resample()]) for _ in range(n_resamples)], dtype=np.float64)
    if np.all(np.isnan(stats)):
        return math.nan, math.nan
    low, high = np.nanpercentile(stats, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _resampler(n: int, clusters: Sequence[Hashable] | None, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    """A function drawing one bootstrap sample of indices: items with replacement, or whole clusters."""
    if clusters is None:
        return lambda: rng.integers(0, n, n)
    if len(clusters) != n:
        raise ValueError(f"clusters has {len(clusters)} entries but there are {n} values; pass one per value")
    _, cluster_of = np.unique(np.asarray(clusters), return_inverse=True)
    order = np.argsort(cluster_of, kind="stable")  # members of each cluster are contiguous in `order`
    sizes = np.bincount(cluster_of)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    def draw() -> np.ndarray:
        picked = rng.integers(0, len(sizes), len(sizes))
        lengths = sizes[picked]
        shift = starts[picked] - (np.cumsum(lengths) - lengths)  # position in `order` minus position in output
        return order[np.repeat(shift, lengths) + np.arange(lengths.sum())]

    return draw


def paired_task_bootstrap(
    agreements: Mapping[str, Any], task_ids: Sequence[Hashable], *, n_resamples: int = 2000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Accuracies of several scorers on the same bootstrap resamples of tasks: name → (B,) accuracies.

    `agreements[name]` holds one value per vote (1, ½ or 0, as `trainer.metrics.strict_agreement` gives), all in
    the order of `task_ids`. A resample draws as many tasks as there are, with replacement, and keeps every vote of
    each drawn task; all scorers see the same draws, so a difference of their accuracies stays paired vote by vote.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    _, task_of = np.unique(np.asarray(task_ids), return_inverse=True)
    votes = np.bincount(task_of).astype(np.float64)  # (T,) votes per task
    sums = {}
    for name, values in agreements.items():
        a = np.asarray(values, dtype=np.float64)
        if a.shape != (len(task_of),):
            raise ValueError(f"{name} has {a.size} agreements but there are {len(task_of)} task ids; pass one per vote")
        sums[name] = np.bincount(task_of, weights=a, minlength=len(votes))  # (T,) agreements per task
    if len(votes) == 0:
        return {name: np.full(n_resamples, math.nan) for name in sums}
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(votes))  # bounds the (chunk, T) index matrix to ≈ 16 MB
    out: dict[str, list[np.ndarray]] = {name: [] for name in sums}
    for start in range(0, n_resamples, chunk):
        drawn = rng.integers(0, len(votes), (min(chunk, n_resamples - start), len(votes)))  # (b, T) task indices
        denominator = votes[drawn].sum(axis=1)  # (b,) >= 1: every task has a vote
        for name, per_task in sums.items():
            out[name].append(per_task[drawn].sum(axis=1) / denominator)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def interval_function(
    n: int, clusters: Sequence[Hashable] | None, n_bootstrap: int, seed: int
) -> Callable[[Callable[[np.ndarray], float]], tuple[float, float] | None]:
    """statistic-of-indices → its 95% interval over `n` items (or None when bootstrapping is off)."""

    def interval(statistic: Callable[[np.ndarray], float]) -> tuple[float, float] | None:
        if n_bootstrap == 0:
            return None
        return bootstrap_ci(np.arange(n), statistic, n_resamples=n_bootstrap, seed=seed, clusters=clusters)

    return interval
