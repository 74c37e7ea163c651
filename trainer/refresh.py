"""After a publish: the new version scores the held-out candidates (for `trainer.version_board`); after a promotion
it scores every candidate, and the annotation queue's priorities and the annotators' quality flags are refreshed
from those scores.

It runs in the training process, which already holds the model, right after the gate's decision; never in a
request. Reads use a read-only session; writes go in short transactions of `WRITE_CHUNK` rows, so on SQLite the
write lock is held for milliseconds at a time while annotators keep voting. A failure here is logged and leaves
the run succeeded: stale priorities only make the queue less sharp.

Priorities (`trainer.sampling.pair_priorities`): coverage (few votes), the model's uncertainty about the pair
(|Δr| small, or σ large where the model has an uncertainty head) and disagreement among earlier votes, mixed by
the `JRM_SAMPLING_*_WEIGHT` settings.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased, sessionmaker

from storage import audit
from storage.agreement import canonical_category
from storage.annotation_queue import set_pair_priorities
from storage.db import engine_of, session_factory, transaction
from storage.images import open_image
from storage.models import Candidate, Image, Pair, Task, Vote
from storage.provenance import VoteSelection, vote_selection
from storage.settings import Settings
from trainer.leaderboard_cache import refresh_board
from trainer.model import JointRewardModel
from trainer.prompting import build_example, collate
from trainer.registry.scores import record_scores
from trainer.sampling import PairState, SamplingWeights, pair_priorities
from trainer.version_board import heldout_candidate_ids

log = logging.getLogger(__name__)

SCORE_BATCH = 16  # candidates per forward
WRITE_CHUNK = 500  # rows per write transaction


@dataclass(frozen=True)
class RefreshSummary:
    candidates_scored: int
    pairs_prioritised: int
    annotators_checked: int
    annotators_excluded: int
    seconds: float


@dataclass(frozen=True)
class _Item:
    candidate_id: int
    source: Image
    edited: Image
    instruction: str


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _candidates(session: Session) -> list[_Item]:
    source, edited = aliased(Image), aliased(Image)
    query = (
        select(Candidate.id, source, edited, Task.instruction)
        .join(Task, Task.id == Candidate.task_id)
        .join(source, source.id == Task.source_image_id)
        .join(edited, edited.id == Candidate.image_id)
        .order_by(Candidate.id)
    )
    return [_Item(*row) for row in session.execute(query)]


def score_candidates(
    model: JointRewardModel, items: Sequence[_Item], settings: Settings
) -> dict[int, tuple[float, float | None, dict[str, float] | None]]:
    """candidate id → (μ, σ, dimension scores) from one forward per batch (eval mode, no gradients)."""
    was_training, results = model.training, {}
    model.eval()
    try:
        with torch.no_grad():
            for batch in _chunks(items, SCORE_BATCH):
                examples = [
                    build_example(
                        model.processor,
                        source=open_image(settings, item.source),
                        edited=open_image(settings, item.edited),
                        instruction=item.instruction,
                    )
                    for item in batch
                ]
                rows = model.score_all(collate(examples, model.processor)).rows()
                results.update({item.candidate_id: row for item, row in zip(batch, rows, strict=True)})
    finally:
        model.train(was_training)
    return results


def pair_states(
    session: Session, scores: dict[int, tuple[float, float | None, object]], selection: VoteSelection
) -> list[PairState]:
    """Every pair with its vote count, the model's Δ = r(A) − r(B) and σ of Δ, and earlier canonical votes."""
    canonical: dict[int, Counter] = {}
    query = select(Vote.pair_id, Vote.choice, Vote.left_candidate_id == Pair.candidate_a_id).join(
        Pair, Pair.id == Vote.pair_id
    )
    for pair_id, choice, left_is_a in session.execute(query.where(*selection.where())):
        side = canonical_category(choice, left_is_a=bool(left_is_a))
        canonical.setdefault(pair_id, Counter())["tie" if side == "both_bad" else side] += 1  # both bad: no side won
    states = []
    for pair_id, vote_count, a, b in session.execute(
        select(Pair.id, Pair.vote_count, Pair.candidate_a_id, Pair.candidate_b_id)
    ):
        delta = sigma = None
        if a in scores and b in scores:
            delta = scores[a][0] - scores[b][0]
            sigmas = (scores[a][1], scores[b][1])
            sigma = math.hypot(*sigmas) if None not in sigmas else None
        votes = canonical.get(pair_id, Counter())
        states.append(PairState(pair_id, vote_count, delta, sigma, votes["a"], votes["b"], votes["tie"]))
    return states


def sampling_weights(settings: Settings) -> SamplingWeights:
    return SamplingWeights(
        coverage=settings.sampling_coverage_weight,
        uncertainty=settings.sampling_uncertainty_weight,
        disagreement=settings.sampling_disagreement_weight,
    )


def refresh_after_publish(
    factory: sessionmaker[Session], *, model: JointRewardModel, version_id: int, promoted: bool, settings: Settings
) -> RefreshSummary:
    """Score the held-out candidates (every candidate when `promoted`); when promoted, also write pair priorities
    and annotator flags."""
    started = time.monotonic()
    reader = session_factory(engine_of(factory), read_only=True)
    with reader() as session:
        items = _candidates(session)
        if not promoted:
            keep = set(heldout_candidate_ids(session))
            items = [item for item in items if item.candidate_id in keep]
    scores = score_candidates(model, items, settings)  # no session open while the model runs
    for chunk in _chunks(list(scores), WRITE_CHUNK):
        with transaction(factory) as session:
            record_scores(
                session,
                version_id=version_id,
                scores={c: scores[c][0] for c in chunk},
                sigmas={c: scores[c][1] for c in chunk},
                dimensions={c: scores[c][2] for c in chunk},
            )
    if not promoted:
        return RefreshSummary(len(scores), 0, 0, 0, time.monotonic() - started)
    with reader() as session:
        everyone = vote_selection(session, settings=settings, exclude_flagged=False)
        states = pair_states(session, scores, everyone)
        report = audit.quality_report(session, selection=everyone, version_id=version_id)
    priorities = pair_priorities(states, sampling_weights(settings), overlap_target=settings.overlap_target)
    for chunk in _chunks(list(priorities), WRITE_CHUNK):
        with transaction(factory) as session:
            set_pair_priorities(session, priorities={p: priorities[p] for p in chunk})
    with transaction(factory) as session:
        excluded = audit.write_flags(session, report)
    refresh_board(factory, settings=settings)  # the new version's mean scores, and flags may change the selection
    return RefreshSummary(
        len(scores), len(priorities), len(report.annotators), sum(excluded.values()), time.monotonic() - started
    )
