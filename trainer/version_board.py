"""Every model version's accuracy on one and the same set of held-out votes, read from the score cache.

Each version's own `metrics["heldout_accuracy"]` was measured on its run's snapshot, whose held-out split grows as
votes arrive, so two versions' numbers are not comparable. This board takes the held-out tasks' strict votes (left /
right; the same task-level split as training, `trainer.data.split_of`) and keeps those whose two candidates *every*
listed version has scored (the worker scores the held-out candidates after each publish and every candidate after a
promotion), so all versions are judged on identical votes. No model runs here: it is a read of the `scores` table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from storage.models import Candidate, Image, ModelVersion, Task, Vote
from storage.provenance import VoteSelection
from trainer.data import HELDOUT, split_of, task_key
from trainer.metrics import strict_agreement
from trainer.registry.scores import cached_scores


@dataclass(frozen=True)
class VersionAccuracy:
    name: str
    status: str
    accuracy: float  # mean strict agreement (1, ½ for Δ = 0, 0) on the common votes


@dataclass(frozen=True)
class VersionBoard:
    rows: list[VersionAccuracy]  # oldest version first
    votes: int  # strict held-out votes every listed version scored
    left_out: list[str]  # versions that scored none of them (published before scoring, or never scored)


@dataclass(frozen=True)
class _HeldoutVote:
    left: int
    right: int
    choice: str


def heldout_strict_votes(session: Session, *, selection: VoteSelection) -> list[_HeldoutVote]:
    """The selected left/right votes on held-out tasks, oldest first."""
    left, right = aliased(Candidate), aliased(Candidate)
    query = (
        select(Image.sha256, Task.instruction, Vote.left_candidate_id, Vote.right_candidate_id, Vote.choice)
        .join(Task, Task.id == Vote.task_id)
        .join(Image, Image.id == Task.source_image_id)
        .join(left, left.id == Vote.left_candidate_id)
        .join(right, right.id == Vote.right_candidate_id)
        .where(Vote.choice.in_(("left", "right")), *selection.where())
        .order_by(Vote.id)
    )
    return [
        _HeldoutVote(a, b, choice)
        for sha, instruction, a, b, choice in session.execute(query)
        if split_of(task_key(sha, instruction)) == HELDOUT
    ]


def heldout_candidate_ids(session: Session) -> list[int]:
    """Candidates of held-out tasks: what a version scores after it is published, promoted or not."""
    query = (
        select(Candidate.id, Image.sha256, Task.instruction)
        .join(Task, Task.id == Candidate.task_id)
        .join(Image, Image.id == Task.source_image_id)
    )
    return [cid for cid, sha, instruction in session.execute(query) if split_of(task_key(sha, instruction)) == HELDOUT]


def version_board(session: Session, *, selection: VoteSelection) -> VersionBoard:
    """Accuracy of every version that scored the held-out candidates, on the votes they all scored."""
    votes = heldout_strict_votes(session, selection=selection)
    ids = sorted({c for v in votes for c in (v.left, v.right)})
    scored, left_out = [], []
    for version in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
        scores = cached_scores(session, version_id=version.id, candidate_ids=ids) if ids else {}
        (scored if scores else left_out).append((version, scores))
    common = [v for v in votes if all(v.left in s and v.right in s for _, s in scored)]
    rows = []
    for version, scores in scored:
        delta = np.array([scores[v.left] - scores[v.right] for v in common], dtype=np.float64)
        accuracy = float(strict_agreement(delta, [v.choice for v in common]).mean()) if common else float("nan")
        rows.append(VersionAccuracy(version.name, version.status, accuracy))
    return VersionBoard(rows, len(common), [version.name for version, _ in left_out])
