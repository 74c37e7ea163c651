"""Annotator agreement: pure statistics on pairwise preference votes (no database, no numpy).

Every vote is first put in the pair's canonical frame: the annotator saw the pair as left/right, but the
statistics compare *which candidate* won, so "left" on a pair shown with candidate A on the left and
"right" on the same pair shown swapped are the same answer, "a". Ties and both-bad are categories of their
own, giving 4 nominal categories: a, b, tie, both_bad.

Undefined statistics are None, never NaN: a kappa or alpha with no overlapping votes, or with every vote in
one category (expected disagreement 0, so the ratio is 0/0). Formulas and thresholds: docs/annotator-quality.md.
Per-annotator quality control built on these (outlier test, report): `storage.quality`.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from storage.models import CHOICES, GOLD_ANSWERS, GoldAnswer

Category = GoldAnswer  # a vote in the pair's canonical order: candidate A or B better, a tie, or both bad
CATEGORIES: tuple[str, ...] = GOLD_ANSWERS
DECISIVE: frozenset[str] = frozenset({"a", "b"})


@dataclass(frozen=True)
class PairVote:
    """One annotator's vote on one pair, as shown: `choice` is left/right/tie/both_bad on the layout seen."""

    pair_id: int
    annotator: str
    choice: str
    left_is_a: bool
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise ValueError(
                f"vote on pair {self.pair_id} by {self.annotator!r} has choice {self.choice!r}; "
                f"use one of {', '.join(CHOICES)}"
            )
        if not self.annotator:
            raise ValueError(f"vote on pair {self.pair_id} has an empty annotator name; name who voted")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds >= 0):
            raise ValueError(
                f"vote on pair {self.pair_id} by {self.annotator!r} took {self.seconds} s; "
                "pass a finite number >= 0, or None when the time is unknown"
            )

    @property
    def category(self) -> str:
        """The canonical answer: a, b, tie or both_bad, whatever side A was shown on."""
        return canonical_category(self.choice, left_is_a=self.left_is_a)


def canonical_category(choice: str, *, left_is_a: bool) -> str:
    """Map an as-shown choice to the pair's frame: left/right become a/b; tie and both_bad stay."""
    if choice == "left":
        return "a" if left_is_a else "b"
    if choice == "right":
        return "b" if left_is_a else "a"
    return choice


def check_votes(votes: Sequence[PairVote]) -> None:
    """Refuse an empty list and a second vote by one annotator on one pair (it would count twice)."""
    if not votes:
        raise ValueError("no votes given; pass at least one PairVote")
    seen: set[tuple[int, str]] = set()
    for vote in votes:
        key = (vote.pair_id, vote.annotator)
        if key in seen:
            raise ValueError(
                f"{vote.annotator!r} voted twice on pair {vote.pair_id}; keep one vote per annotator and pair "
                "(anonymous imported votes have no annotator: leave them out)"
            )
        seen.add(key)


def categories_by_pair(votes: Iterable[PairVote]) -> dict[int, dict[str, str]]:
    """pair_id -> {annotator: canonical category}."""
    by_pair: dict[int, dict[str, str]] = defaultdict(dict)
    for vote in votes:
        by_pair[vote.pair_id][vote.annotator] = vote.category
    return dict(by_pair)


def votes_by_annotator(votes: Iterable[PairVote]) -> dict[str, list[PairVote]]:
    """annotator -> their votes, in the order given."""
    grouped: dict[str, list[PairVote]] = defaultdict(list)
    for vote in votes:
        grouped[vote.annotator].append(vote)
    return dict(grouped)


@dataclass(frozen=True)
class Rate:
    """A share with its denominator; `rate` is None when `n` is 0."""

    rate: float | None
    n: int


def share(hits: float, n: int) -> Rate:
    """hits / n as a Rate (None for n = 0)."""
    return Rate(hits / n if n else None, n)


# --- chance-corrected agreement -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kappa:
    """Cohen's kappa over the `n` items both raters labelled; None when undefined."""

    kappa: float | None
    n: int


def cohen_kappa(pairs_of_labels: Iterable[tuple[Hashable, Hashable]]) -> Kappa:
    """Cohen's kappa (p_o − p_e) / (1 − p_e); None for no items, or when p_e = 1 (both raters used one label)."""
    pairs = list(pairs_of_labels)
    n = len(pairs)
    if n == 0:
        return Kappa(None, 0)
    observed = sum(first == second for first, second in pairs) / n
    firsts, seconds = Counter(p[0] for p in pairs), Counter(p[1] for p in pairs)
    expected = sum(firsts[label] * seconds[label] for label in firsts) / (n * n)
    if expected == 1:
        return Kappa(None, n)
    return Kappa((observed - expected) / (1 - expected), n)


@dataclass(frozen=True)
class PairwiseKappa:
    """Cohen's kappa between annotators `a` and `b` (a < b) over the `n` pairs both voted on."""

    a: str
    b: str
    kappa: float | None
    n: int


def pairwise_kappas(votes: Sequence[PairVote]) -> list[PairwiseKappa]:
    """Cohen's kappa on canonical categories for every annotator pair sharing >= 1 voted pair, sorted by names."""
    check_votes(votes)
    by_annotator: dict[str, dict[int, str]] = defaultdict(dict)
    for vote in votes:
        by_annotator[vote.annotator][vote.pair_id] = vote.category
    result = []
    for a, b in combinations(sorted(by_annotator), 2):
        shared = sorted(by_annotator[a].keys() & by_annotator[b].keys())
        if shared:
            kappa = cohen_kappa((by_annotator[a][p], by_annotator[b][p]) for p in shared)
            result.append(PairwiseKappa(a, b, kappa.kappa, kappa.n))
    return result


def coincidences(units: Iterable[Sequence[Hashable]]) -> Counter[tuple[Hashable, Hashable]]:
    """Krippendorff's coincidence matrix o[c, k]: Σ over units with m >= 2 values of n_uc · (n_uk − [c = k]) / (m − 1).

    That is, every ordered pair of two different values of a unit adds 1 / (m − 1); units with a single value
    are not pairable and add nothing.
    """
    matrix: Counter[tuple[Hashable, Hashable]] = Counter()
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                matrix[c, k] += n_c * (n_k - (c == k)) / (m - 1)
    return matrix


def alpha_nominal(units: Iterable[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha, nominal metric, from each unit's values (missing ones left out); None if undefined.

    With n_c = Σ_k o[c, k] and n = Σ_c n_c: alpha = 1 − (n − 1) · Σ_{c≠k} o[c, k] / Σ_{c≠k} n_c · n_k.
    Undefined (None) with no pairable unit, or when every pairable value is one category (0/0).
    """
    matrix = coincidences(units)
    totals: Counter[Hashable] = Counter()
    for (c, _), weight in matrix.items():
        totals[c] += weight
    if len(totals) < 2:
        return None
    n = sum(totals.values())
    observed = sum(weight for (c, k), weight in matrix.items() if c != k)
    expected = n * n - sum(t * t for t in totals.values())  # Σ_{c≠k} n_c · n_k
    return 1 - (n - 1) * observed / expected


def krippendorff_alpha_nominal(votes: Sequence[PairVote]) -> float | None:
    """Krippendorff's nominal alpha on canonical categories over all pairs with >= 2 votes; None if undefined."""
    check_votes(votes)
    return alpha_nominal(list(by_annotator.values()) for by_annotator in categories_by_pair(votes).values())


# --- position bias --------------------------------------------------------------------------------------------


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided binomial p-value against 1/2: the total probability of every count no likelier than k.

    As scipy.stats.binomtest: Σ C(n, i) / 2^n over the i with C(n, i) <= C(n, k). C(n, i) is symmetric and
    unimodal in i, so those i are the two tails i <= j and i >= n − j, j = min(k, n − k), and the sum is twice
    the lower tail (capped at 1 where the tails meet). Integer arithmetic: "no likelier" needs no tolerance.
    """
    if not 0 <= k <= n:
        raise ValueError(f"k = {k} successes out of n = {n}; k must be in 0..n")
    coefficient = tail = 1  # C(n, 0)
    for i in range(min(k, n - k)):
        coefficient = coefficient * (n - i) // (i + 1)  # C(n, i + 1), exact
        tail += coefficient
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class LeftRate:
    """`left` of `decisive` left/right votes; `rate` and the two-sided `p_value` against 1/2 (None if no votes)."""

    left: int
    decisive: int
    rate: float | None
    p_value: float | None


def left_rate_test(votes: Sequence[PairVote]) -> LeftRate:
    """Share of "left" among one annotator's left/right votes, and its exact binomial test against 1/2."""
    annotators = {vote.annotator for vote in votes}
    if len(annotators) > 1:
        raise ValueError(f"left_rate_test takes one annotator's votes; got {len(annotators)}: {sorted(annotators)}")
    left = sum(vote.choice == "left" for vote in votes)
    decisive = left + sum(vote.choice == "right" for vote in votes)
    if decisive == 0:
        return LeftRate(0, 0, None, None)
    return LeftRate(left, decisive, left / decisive, binomial_two_sided_p(left, decisive))


# --- speed, model and gold ------------------------------------------------------------------------------------


def median_seconds(votes: Iterable[PairVote]) -> float | None:
    """Median time per vote over the votes whose time is known; None when none is."""
    times = [vote.seconds for vote in votes if vote.seconds is not None]
    return statistics.median(times) if times else None


@dataclass(frozen=True)
class ModelAgreement:
    """Agreement with one model version's Δ, per annotator and pooled over every counted vote."""

    overall: Rate
    per_annotator: dict[str, Rate]


def model_agreement(votes: Sequence[PairVote], deltas: Mapping[int, float]) -> ModelAgreement:
    """Share of decisive (a/b) votes where sign(Δ = r(A) − r(B)) picks the same candidate; Δ = 0 counts ½.

    Ties and both_bad are left out (a reward difference does not say "tie"), as are pairs missing from `deltas`.
    Δ = 0 counts one half, as `trainer.metrics.pairwise_accuracy` does.
    """
    check_votes(votes)
    bad = [pair for pair, delta in deltas.items() if not math.isfinite(delta)]
    if bad:
        raise ValueError(f"deltas for pairs {sorted(bad)[:5]} are NaN or inf; check the scorer's outputs")
    hits: dict[str, float] = defaultdict(float)
    counts: Counter[str] = Counter()
    for vote in votes:
        if vote.category in DECISIVE and vote.pair_id in deltas:
            hits[vote.annotator] += _sides_with(vote.category, deltas[vote.pair_id])
            counts[vote.annotator] += 1
    per_annotator = {name: share(hits[name], counts[name]) for name in votes_by_annotator(votes)}
    return ModelAgreement(share(sum(hits.values()), sum(counts.values())), per_annotator)


def _sides_with(category: str, delta: float) -> float:
    """1 if Δ prefers the candidate the vote chose, ½ if Δ = 0, else 0."""
    sign = (delta > 0) - (delta < 0)
    return (sign * (1 if category == "a" else -1) + 1) / 2


def gold_accuracy(votes: Sequence[PairVote], gold: Mapping[int, str]) -> dict[str, Rate]:
    """Per annotator: share of their votes on gold pairs whose canonical category is the gold one."""
    check_votes(votes)
    unknown = {label for label in gold.values() if label not in CATEGORIES}
    if unknown:
        raise ValueError(f"gold labels {sorted(unknown)} are not canonical; use one of {', '.join(CATEGORIES)}")
    result = {}
    for name, own in votes_by_annotator(votes).items():
        on_gold = [vote for vote in own if vote.pair_id in gold]
        result[name] = share(sum(vote.category == gold[vote.pair_id] for vote in on_gold), len(on_gold))
    return result
