"""Annotator quality control: per-annotator checks and the report that gathers them (pure, no database).

Checks, each flagging only past a minimum amount of evidence (`QualityThresholds`):

- position bias: exact two-sided binomial test of "left" among left/right votes (`agreement.left_rate_test`);
- speed: median seconds per vote;
- peer agreement: share of votes equal to the plurality of the *other* annotators on the same pair;
- gold accuracy: share of votes on gold pairs equal to the gold category;
- sequential outlier test (below).

Agreement with the reward model is reported but never flags: the model is trained on these votes, so
flagging whoever disagrees with it would teach it its own mistakes.

Sequential outlier test, in the manner of Chatbot Arena's anomalous-user detection (score each vote against the
other users' votes on the same comparison, accumulate the evidence over the user's votes, flag past a
threshold). For annotator u, over u's votes in the order given (pass them oldest first):

1. On pair k, let N be the number of other annotators' votes and N_c their count in category c. The others'
   outcome distribution, Laplace-smoothed over the 4 categories, is q_k(c) = (N_c + 1) / (N + 4).
   Pairs nobody else voted on are skipped.
2. u's vote x scores the likelihood ratio L = q_k(flip(x)) / q_k(x), flip swapping a and b (tie and both_bad
   map to themselves, so L = 1): how much likelier the vote is for an annotator who prefers the candidate the
   others rejected than for one voting like the others.
3. Four bettors start with wealth 1/4 each and stake a fraction λ ∈ {1/4, 1/2, 3/4, 1}: each vote multiplies a
   bettor's wealth by 1 + λ(L − 1). Under the null (u's votes are drawn from q_k) E[L] = Σ_c q_k(flip(c)) = 1,
   so the total wealth W_j after j votes is a non-negative martingale with W_0 = 1, and Ville's inequality gives
   P(max_j W_j >= 1/α) <= α: W may be checked after every vote with no multiple-testing correction.
4. outlier_score = log10(max_j W_j) >= 0; flagged when outlier_score >= log10(1 / outlier_alpha).

Fisher's combination of per-vote p-values is not used: against a unanimous crowd of three, voting b has
p = 3/7 (b, tie and both_bad are equally unlikely), so with a few votes per pair the combination almost never
reaches significance. Details and simulations: docs/annotator-quality.md.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from storage.agreement import (
    CATEGORIES,
    LeftRate,
    PairVote,
    PairwiseKappa,
    Rate,
    categories_by_pair,
    check_votes,
    gold_accuracy,
    krippendorff_alpha_nominal,
    left_rate_test,
    median_seconds,
    model_agreement,
    pairwise_kappas,
    share,
    votes_by_annotator,
)

REASON_CODES = ("position_bias", "too_fast", "low_peer_agreement", "low_gold_accuracy", "outlier")
FLIP = {"a": "b", "b": "a", "tie": "tie", "both_bad": "both_bad"}
STAKES = (0.25, 0.5, 0.75, 1.0)  # the bettors' fractions λ (step 3 of the outlier test)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class QualityThresholds:
    """When a check flags an annotator; docs/annotator-quality.md says why each default."""

    left_rate_alpha: float = field(default=0.01, metadata=_help("flag position bias when the binomial p <= this"))
    min_votes: int = field(default=10, metadata=_help("left/right votes (timed votes) before bias (speed) flags"))
    min_median_seconds: float = field(default=2.0, metadata=_help("flag a median time per vote under this"))
    min_peer_agreement: float = field(default=0.4, metadata=_help("flag a peer agreement under this"))
    min_peer_votes: int = field(default=30, metadata=_help("votes on pairs with a peer plurality before it flags"))
    outlier_alpha: float = field(default=0.001, metadata=_help("flag when the outlier evidence reaches 1/alpha"))
    min_gold_accuracy: float = field(default=0.6, metadata=_help("flag a gold accuracy under this"))
    min_gold_votes: int = field(default=10, metadata=_help("votes on gold pairs before gold accuracy flags"))

    def __post_init__(self) -> None:
        for name in ("left_rate_alpha", "outlier_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}; use a significance level in (0, 1), e.g. 0.01")
        for name in ("min_peer_agreement", "min_gold_accuracy"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} = {getattr(self, name)}; use a share in [0, 1]")
        for name in ("min_votes", "min_peer_votes", "min_gold_votes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} = {value!r}; use a whole number of votes >= 1")
        if not (math.isfinite(self.min_median_seconds) and self.min_median_seconds >= 0):
            raise ValueError(f"min_median_seconds = {self.min_median_seconds}; use a finite number of seconds >= 0")


DEFAULT_THRESHOLDS = QualityThresholds()


def others_on_pair(by_pair: Mapping[int, Mapping[str, str]], vote: PairVote) -> list[str]:
    """The canonical categories the other annotators gave the vote's pair."""
    return [category for name, category in by_pair[vote.pair_id].items() if name != vote.annotator]


def smoothed_distribution(categories: Sequence[str]) -> dict[str, float]:
    """Laplace-smoothed outcome distribution over the 4 categories: (N_c + 1) / (N + 4)."""
    counts = Counter(categories)
    return {c: (counts[c] + 1) / (len(categories) + len(CATEGORIES)) for c in CATEGORIES}


def flip_likelihood_ratio(category: str, others: Sequence[str]) -> float:
    """q(flip(x)) / q(x) under the others' smoothed distribution q: the per-vote evidence of the outlier test."""
    q = smoothed_distribution(others)
    return q[FLIP[category]] / q[category]


@dataclass(frozen=True)
class OutlierEvidence:
    """log10 of the largest wealth the outlier test reached, after how many scored votes, of how many."""

    score: float
    at_vote: int
    scored: int


def outlier_evidence(likelihood_ratios: Sequence[float]) -> OutlierEvidence:
    """Running wealth of the four bettors (module docstring, step 3) over the ratios in order; its maximum."""
    log_wealth = [math.log(1 / len(STAKES))] * len(STAKES)
    best, at_vote = 0.0, 0
    for j, ratio in enumerate(likelihood_ratios, start=1):
        log_wealth = [w + math.log1p(stake * (ratio - 1)) for w, stake in zip(log_wealth, STAKES, strict=True)]
        total = _logsumexp(log_wealth)
        if total > best:
            best, at_vote = total, j
    return OutlierEvidence(best / math.log(10), at_vote, len(likelihood_ratios))


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def annotator_outlier(own: Sequence[PairVote], by_pair: Mapping[int, Mapping[str, str]]) -> OutlierEvidence:
    """The outlier test for one annotator's votes (oldest first) against everyone else's on the same pairs."""
    ratios = []
    for vote in own:
        others = others_on_pair(by_pair, vote)
        if others:
            ratios.append(flip_likelihood_ratio(vote.category, others))
    return outlier_evidence(ratios)


def peer_agreement(own: Sequence[PairVote], by_pair: Mapping[int, Mapping[str, str]]) -> Rate:
    """Share of votes equal to the others' plurality on the pair; pairs with no peer or a tied plurality skipped."""
    hits = n = 0
    for vote in own:
        ranked = Counter(others_on_pair(by_pair, vote)).most_common(2)
        if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
            continue
        n += 1
        hits += vote.category == ranked[0][0]
    return share(hits, n)


@dataclass(frozen=True)
class AnnotatorQuality:
    """One annotator's checks; rates are None when there was nothing to compute them on."""

    name: str
    votes: int
    left_rate: float | None
    left_rate_p: float | None
    median_seconds: float | None
    peer_agreement: float | None
    model_agreement: float | None
    gold_accuracy: float | None
    outlier_score: float
    flagged: bool
    reason_codes: list[str]  # REASON_CODES, one per reason
    reasons: list[str]


@dataclass(frozen=True)
class AgreementReport:
    """Agreement over all annotators and one AnnotatorQuality per annotator, sorted by name."""

    krippendorff_alpha: float | None
    pairwise_kappa: list[PairwiseKappa]
    model_agreement: Rate | None
    annotators: list[AnnotatorQuality]

    def to_json(self) -> dict[str, Any]:
        """A plain dict of lists, numbers, strings and None, ready for json.dumps."""
        return {
            "krippendorff_alpha": self.krippendorff_alpha,
            "pairwise_kappa": [asdict(kappa) for kappa in self.pairwise_kappa],
            "model_agreement": asdict(self.model_agreement) if self.model_agreement else None,
            "annotators": [asdict(annotator) for annotator in self.annotators],
        }


def annotator_report(
    votes: Sequence[PairVote],
    *,
    deltas: Mapping[int, float] | None = None,
    gold: Mapping[int, str] | None = None,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
) -> AgreementReport:
    """Agreement statistics and every annotator's checks and flags; pass votes oldest first (outlier test)."""
    check_votes(votes)
    by_pair = categories_by_pair(votes)
    models = model_agreement(votes, deltas) if deltas is not None else None
    golds = gold_accuracy(votes, gold) if gold is not None else {}
    annotators = []
    for name, own in sorted(votes_by_annotator(votes).items()):
        model = models.per_annotator[name] if models else None
        annotators.append(_annotator_quality(name, own, by_pair, model, golds.get(name), thresholds))
    return AgreementReport(
        krippendorff_alpha_nominal(votes), pairwise_kappas(votes), models.overall if models else None, annotators
    )


def _annotator_quality(
    name: str,
    own: Sequence[PairVote],
    by_pair: Mapping[int, Mapping[str, str]],
    model: Rate | None,
    gold: Rate | None,
    thresholds: QualityThresholds,
) -> AnnotatorQuality:
    left, seconds = left_rate_test(own), median_seconds(own)
    peers, outlier = peer_agreement(own, by_pair), annotator_outlier(own, by_pair)
    timed = sum(vote.seconds is not None for vote in own)
    found = [
        _bias_flag(left, thresholds),
        _speed_flag(seconds, timed, thresholds),
        _rate_flag(
            "low_peer_agreement", "peer agreement", peers, thresholds.min_peer_agreement, thresholds.min_peer_votes
        ),
        _rate_flag("low_gold_accuracy", "gold accuracy", gold, thresholds.min_gold_accuracy, thresholds.min_gold_votes),
        _outlier_flag(outlier, thresholds),
    ]
    flags = [flag for flag in found if flag is not None]
    return AnnotatorQuality(
        name=name,
        votes=len(own),
        left_rate=left.rate,
        left_rate_p=left.p_value,
        median_seconds=seconds,
        peer_agreement=peers.rate,
        model_agreement=model.rate if model else None,
        gold_accuracy=gold.rate if gold else None,
        outlier_score=outlier.score,
        flagged=bool(flags),
        reason_codes=[code for code, _ in flags],
        reasons=[text for _, text in flags],
    )


# Each check: None, or (reason code, human-readable reason). The codes are stable; the texts may change.


def _bias_flag(left: LeftRate, t: QualityThresholds) -> tuple[str, str] | None:
    if left.p_value is None or left.decisive < t.min_votes or left.p_value > t.left_rate_alpha:
        return None
    return "position_bias", f"left on {left.left} of {left.decisive} decisive votes (p={left.p_value:.0e})"


def _speed_flag(seconds: float | None, timed: int, t: QualityThresholds) -> tuple[str, str] | None:
    if seconds is None or timed < t.min_votes or seconds >= t.min_median_seconds:
        return None
    return "too_fast", f"median {seconds:.1f} s per vote over {timed} timed votes, under {t.min_median_seconds:g} s"


def _rate_flag(code: str, what: str, rate: Rate | None, minimum: float, min_n: int) -> tuple[str, str] | None:
    if rate is None or rate.rate is None or rate.n < min_n or rate.rate >= minimum:
        return None
    return code, f"{what} {round(rate.rate * rate.n)} of {rate.n} ({rate.rate:.0%}), under {minimum:.0%}"


def _outlier_flag(outlier: OutlierEvidence, t: QualityThresholds) -> tuple[str, str] | None:
    if outlier.score < math.log10(1 / t.outlier_alpha):
        return None
    return "outlier", (
        f"prefers the candidate the others rejected: evidence 10^{outlier.score:.1f} after {outlier.at_vote} "
        f"of {outlier.scored} votes with peers (flag at 10^{math.log10(1 / t.outlier_alpha):.1f})"
    )
