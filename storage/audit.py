"""The store's side of the quality check: votes as `PairVote`s, model deltas per version, gold answers, and flags.

`storage.agreement` and `storage.quality` compute on plain values; this module reads them from the database and
writes the verdicts back to `annotator_flags`. The check resamples nothing but reads every selected vote, so it runs
in the worker (after each promotion) or from `python -m storage agreement`, never inside a request.

A flag a researcher cleared stays cleared while later checks find only the reasons the clearance covered; a new
reason (say, a position bias on top of the speed that was cleared) flags the annotator again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from storage.agreement import PairVote
from storage.errors import InvalidInput, NotFound
from storage.models import GOLD_ANSWERS, AnnotatorFlag, ModelVersion, Pair, Score, User, Vote, utcnow
from storage.provenance import VoteSelection
from storage.quality import DEFAULT_THRESHOLDS, AgreementReport, QualityThresholds, annotator_report
from storage.validation import _text

CLEAR_REASON_MAX_CHARS = 1000


def pair_votes(session: Session, *, selection: VoteSelection) -> list[PairVote]:
    """The selected votes of named annotators, oldest first, in the form the statistics take (anonymous imported
    votes have no annotator to audit and are left out)."""
    query = (
        select(Vote.pair_id, User.name, Vote.choice, Vote.left_candidate_id == Pair.candidate_a_id, Vote.time_spent_ms)
        .join(User, User.id == Vote.annotator_id)
        .join(Pair, Pair.id == Vote.pair_id)
        .where(*selection.where())
        .order_by(Vote.created_at, Vote.id)
    )
    return [
        PairVote(pair_id, name, choice, bool(left_is_a), None if ms is None else ms / 1000)
        for pair_id, name, choice, left_is_a, ms in session.execute(query)
    ]


def gold_answers(session: Session) -> dict[int, str]:
    """pair id → known answer, for the pairs marked gold."""
    return dict(session.execute(select(Pair.id, Pair.gold).where(Pair.gold.is_not(None))).all())


def version_deltas(session: Session, *, version_id: int) -> dict[int, float]:
    """pair id → r(A) − r(B) under `version_id`, for the pairs whose two candidates that version has scored."""
    score_a, score_b = aliased(Score), aliased(Score)
    query = (
        select(Pair.id, score_a.score - score_b.score)
        .join(score_a, (score_a.candidate_id == Pair.candidate_a_id) & (score_a.version_id == version_id))
        .join(score_b, (score_b.candidate_id == Pair.candidate_b_id) & (score_b.version_id == version_id))
    )
    return dict(session.execute(query).all())


@dataclass(frozen=True)
class VersionAgreement:
    name: str
    status: str
    agreement: float | None  # share of decisive votes whose side the version scores higher (Δ = 0 counts ½)
    votes: int


def agreement_by_version(session: Session, votes: list[PairVote]) -> list[VersionAgreement]:
    """Model–human agreement of every version that has scores, oldest first."""
    from storage.agreement import model_agreement

    rows = []
    for version in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
        deltas = version_deltas(session, version_id=version.id)
        if deltas:
            overall = model_agreement(votes, deltas).overall
            rows.append(VersionAgreement(version.name, version.status, overall.rate, overall.n))
    return rows


def quality_report(
    session: Session,
    *,
    selection: VoteSelection,
    version_id: int | None = None,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
) -> AgreementReport:
    """Agreement and every annotator's checks over the selected votes; model agreement against `version_id`."""
    votes = pair_votes(session, selection=selection)
    deltas = version_deltas(session, version_id=version_id) if version_id is not None else None
    gold = gold_answers(session) or None
    return annotator_report(votes, deltas=deltas, gold=gold, thresholds=thresholds)


def set_gold(session: Session, *, pair_id: int, answer: str | None) -> Pair:
    """Mark pair `pair_id` as a gold pair with its known answer in canonical order (a: the lower candidate id is
    better, b, tie, both_bad), or unmark it (None). Annotators' agreement with gold answers is a quality check."""
    if answer is not None and answer not in GOLD_ANSWERS:
        raise InvalidInput(f"a gold answer is one of {', '.join(GOLD_ANSWERS)} (a: candidate A, the lower id, is "
                           f"better); got {answer!r}.")
    pair = session.get(Pair, pair_id) if isinstance(pair_id, int) and not isinstance(pair_id, bool) else None
    if pair is None:
        raise NotFound(f"pair {pair_id} does not exist; pair ids are in the pairs table (and in exports).")
    pair.gold = answer
    session.flush()
    return pair


def write_flags(session: Session, report: AgreementReport) -> dict[str, bool]:
    """Store each annotator's verdict; returns name → whether their votes are now excluded (flagged, not cleared)."""
    names = [a.name for a in report.annotators]
    ids = {name: user_id for name, user_id in session.execute(select(User.name, User.id).where(User.name.in_(names)))}
    existing = {f.annotator_id: f for f in session.scalars(select(AnnotatorFlag))}
    now, excluded = utcnow(), {}
    for annotator in report.annotators:
        flag = existing.get(ids[annotator.name]) or AnnotatorFlag(annotator_id=ids[annotator.name])
        session.add(flag)
        flag.flagged, flag.checked_at = annotator.flagged, now
        flag.reasons = {"codes": list(annotator.reason_codes), "text": list(annotator.reasons)}
        covered = set((flag.cleared_codes or {}).get("codes", []))
        if flag.cleared_at is not None and not set(annotator.reason_codes) <= covered:
            flag.cleared_at = flag.cleared_by_id = flag.cleared_reason = flag.cleared_codes = None  # a new reason
        excluded[annotator.name] = flag.flagged and flag.cleared_at is None
    session.flush()
    return excluded


def clear_flag(session: Session, *, annotator: str, cleared_by_id: int | None, reason: str) -> AnnotatorFlag:
    """A researcher's clearance: the annotator's votes train again; the reason is kept with the flag."""
    reason = _text(reason, field="reason", max_chars=CLEAR_REASON_MAX_CHARS,
                   example="checked 20 of their votes by hand: the left bias is in the data")
    user = session.scalar(select(User).where(User.name == annotator))
    flag = session.scalar(select(AnnotatorFlag).where(AnnotatorFlag.annotator_id == user.id)) if user else None
    if flag is None or not flag.flagged:
        raise NotFound(f"{annotator!r} is not flagged; `python -m storage agreement` lists the flagged annotators.")
    if flag.cleared_at is not None:
        raise InvalidInput(f"{annotator!r}'s flag was already cleared on {flag.cleared_at:%Y-%m-%d}: "
                           f"{flag.cleared_reason}")
    flag.cleared_at, flag.cleared_by_id, flag.cleared_reason = utcnow(), cleared_by_id, reason
    flag.cleared_codes = {"codes": list(flag.reasons.get("codes", []))}
    session.flush()
    return flag


def flag_rows(session: Session) -> list[dict[str, Any]]:
    """Every stored verdict with its annotator's name, flagged first."""
    query = select(AnnotatorFlag, User.name).join(User, User.id == AnnotatorFlag.annotator_id)
    rows = [
        {
            "name": name,
            "flagged": flag.flagged,
            "excluded": flag.flagged and flag.cleared_at is None,
            "reasons": flag.reasons.get("text", []),
            "checked_at": flag.checked_at,
            "cleared_reason": flag.cleared_reason,
        }
        for flag, name in session.execute(query)
    ]
    return sorted(rows, key=lambda row: (not row["flagged"], row["name"]))

