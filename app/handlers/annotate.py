"""Annotate tab: show a pair, record a vote (idempotent), skip, and reveal the scorer's view after a vote.

A shown pair lives in the browser session's `gr.State` as `ShownPair`, with a client submission id drawn when
the pair is shown: a double click, a resent request or two buttons pressed at once all carry the same id, and
the store keeps one vote. The left/right order is the assignment's (randomised by `next_pair`, stable across
reloads) and the vote records it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import NamedTuple

import gradio as gr
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import CurrentUser, current_user
from app.deps import Deps
from app.handlers import annotate_transaction, user_errors
from app.render import error, text
from app.scoring import NoScorerYet
from storage.annotation_queue import PairToShow, next_pair, skip_assignment
from storage.errors import InvalidInput
from storage.models import Vote
from storage.repository import record_vote
from storage.settings import Settings
from storage.validation import TIME_SPENT_MAX_MS

# Button labels (what a vote button sends) → stored choice; API callers may send the choice itself.
CHOICE_LABELS = {"Left is better": "left", "Right is better": "right", "Tie": "tie", "Both bad": "both_bad"}
# Per-dimension comparison of the two edits as shown: -2 left much better … 0 same … +2 right much better.
DIMENSION_RANGE = (-2, 2)
DIMENSIONS = {"instruction_following": "Instruction following", "quality": "Image quality",
              "preservation": "Preservation of the rest"}
# The form after a vote: empty rationale, dimensions not rated, sliders at 0 (the page resets it in the browser).
EMPTY_FORM = ("", False, 0, 0, 0)
ALREADY_SAVED = "This vote was already saved; it was not counted twice."
NO_PAIR_HTML = '<div class="jrm-instruction jrm-empty">No pairs are left for you to annotate. Thank you!</div>'


@dataclass(frozen=True)
class ShownPair:
    """The pair on screen, as the vote will record it."""

    assignment_id: int
    task_id: int
    left_candidate_id: int
    right_candidate_id: int
    submission_id: str  # drawn when the pair is shown; the store keeps one vote per id
    shown_at: float  # time.time() when shown, for time_spent_ms


@dataclass(frozen=True)
class CastVote:
    """The vote just cast, for revealing the scorer's opinion of the same two candidates."""

    choice: str
    left_candidate_id: int
    right_candidate_id: int


class PairView(NamedTuple):
    """The annotate tab's outputs for one pair (or for "nothing left")."""

    shown: ShownPair | None
    instruction: str  # HTML, escaped
    source: str | None  # image files
    left: str | None
    right: str | None
    progress: str  # Markdown, numbers only
    token: str  # the shown pair's submission id ("" when none): the page sends it back with the vote


class VoteOutcome(NamedTuple):
    """`PairView` of the next pair, plus the vote just cast and a status line."""

    shown: ShownPair | None
    instruction: str
    source: str | None
    left: str | None
    right: str | None
    progress: str
    token: str
    cast: CastVote | None
    status: str  # Markdown, fixed wording


def _progress(votes_done: int) -> str:
    return f"Your votes so far: **{votes_done}**"


def _view(pair: PairToShow) -> PairView:
    shown = ShownPair(
        assignment_id=pair.assignment_id,
        task_id=pair.task_id,
        left_candidate_id=pair.left_candidate_id,
        right_candidate_id=pair.right_candidate_id,
        submission_id=uuid.uuid4().hex,
        shown_at=time.time(),
    )
    instruction = f'<div class="jrm-instruction"><b>Instruction:</b> {text(pair.instruction)}</div>'
    files = (str(pair.source_file), str(pair.left_file), str(pair.right_file))
    return PairView(shown, instruction, *files, _progress(pair.votes_done), shown.submission_id)


def _next_view(session: Session, settings: Settings, user: CurrentUser) -> PairView:
    pair = next_pair(session, annotator_id=user.id, settings=settings)
    if pair is not None:
        return _view(pair)
    done = session.scalar(select(func.count()).where(Vote.annotator_id == user.id)) or 0
    return PairView(None, NO_PAIR_HTML, None, None, None, _progress(done), "")


def load_pair(deps: Deps, request: gr.Request) -> PairView:
    """The pair this annotator should judge now (the one they hold, or a newly reserved one)."""
    with user_errors(), annotate_transaction(deps) as session:
        return _next_view(session, deps.settings, current_user(deps, request, session))


def parse_choice(value: object) -> str:
    """A vote button's label, or a stored choice name, → the stored choice."""
    choice = CHOICE_LABELS.get(value, value) if isinstance(value, str) else None
    if choice not in CHOICE_LABELS.values():
        raise error(f"Unknown choice {value!r}; send one of {', '.join(CHOICE_LABELS.values())}.")
    return choice


def check_rationale(rationale: object, settings: Settings) -> str | None:
    """The rationale, stripped; `gr.Error` when it is not text or shorter than `rationale_min_chars`."""
    if rationale is not None and not isinstance(rationale, str):
        raise error(f"The rationale must be text, got {type(rationale).__name__}.")
    rationale = (rationale or "").strip()
    if len(rationale) < settings.rationale_min_chars:
        raise error(
            f"Write a rationale of at least {settings.rationale_min_chars} characters (you wrote "
            f"{len(rationale)}): say what made one edit better, e.g. \"B kept the background\"."
        )
    return rationale or None


def dimension_scores(rate: object, *scores: object) -> dict[str, float] | None:
    """The per-dimension sliders as a dict, or None when the annotator did not rate dimensions.

    The values are the request's JSON as sent (the vote skips Gradio's preprocessing), so each is checked here.
    """
    if rate is not None and not isinstance(rate, bool):
        raise error(f"rate_dimensions must be true or false, got {rate!r}.")
    if not rate:
        return None
    rated, (low, high) = {}, DIMENSION_RANGE
    for (name, label), score in zip(DIMENSIONS.items(), scores, strict=True):
        if score is None:
            continue
        if isinstance(score, bool) or not isinstance(score, int | float) or not low <= score <= high:
            raise error(f"{label} must be a number from {low} to {high} (or left out), got {score!r}.")
        rated[name] = float(score)
    return rated


def _time_spent_ms(shown: ShownPair) -> int:
    return max(0, min(TIME_SPENT_MAX_MS, round((time.time() - shown.shown_at) * 1000)))


def submit_vote(
    deps: Deps,
    shown: ShownPair | None,
    choice: str,
    rationale: str | None,
    rate_dimensions: bool | None,
    instruction_following: float | None,
    quality: float | None,
    preservation: float | None,
    pair_token: str | None,
    request: gr.Request,
) -> VoteOutcome:
    """Record the vote on the pair the voter saw (once per submission id) and show the next pair at once.

    `pair_token` is the submission id of the pair on the voter's screen when they voted. The session's `shown`
    moves on as soon as a vote is stored, so a second click, a second vote key or a resent request can reach the
    server after it did: its token then names the earlier pair, and it is answered "already saved" instead of
    being stored as a vote on a pair the voter never judged. The token is required: a client that retries without
    one could otherwise store its retry as a vote on the pair shown since, which the voter never saw. Two requests
    for the same shown pair at once (a double click) are stored by the first; the second waits for it and answers
    with its outcome, "already saved" (`Deps.votes_in_flight`).
    """
    if pair_token is not None and not isinstance(pair_token, str):
        raise error(f"pair_token must be the text next_pair returned, got {type(pair_token).__name__}.")
    if pair_token and (shown is None or pair_token != shown.submission_id):
        return _answer_earlier_vote(deps, pair_token, request)
    if shown is None:
        raise error("No pair is shown: press “Next pair” to load one.")
    if not pair_token:
        raise error(
            "pair_token is required: send the pair_token that next_pair returned with the pair you voted on, so a "
            "retried request can never become a vote on a pair you did not see. Nothing was stored."
        )
    code = parse_choice(choice)
    note = check_rationale(rationale, deps.settings)
    scores = dimension_scores(rate_dimensions, instruction_following, quality, preservation)
    # The key is the session's own pair (server-side state) and the logged-in name, so only the same voter's
    # requests for the same showing share an outcome.
    key = (getattr(request, "username", None), shown.submission_id)
    outcome, first = deps.votes_in_flight.run(key, lambda: _store_vote(deps, shown, code, note, scores, request))
    return outcome if first else outcome._replace(status=ALREADY_SAVED)


def _store_vote(
    deps: Deps, shown: ShownPair, choice: str, rationale: str | None, scores: dict[str, float] | None,
    request: gr.Request,
) -> VoteOutcome:
    with user_errors(), annotate_transaction(deps) as session:
        user = current_user(deps, request, session)
        result = record_vote(
            session,
            task_id=shown.task_id,
            left_candidate_id=shown.left_candidate_id,
            right_candidate_id=shown.right_candidate_id,
            choice=choice,
            rationale=rationale,
            annotator_id=user.id,
            client_submission_id=shown.submission_id,
            dimension_scores=scores,
            time_spent_ms=_time_spent_ms(shown),
            settings=deps.settings,
        )
        view = _next_view(session, deps.settings, user)
    status = "Vote saved." if result.created else ALREADY_SAVED
    return VoteOutcome(*view, cast=_cast(result.vote), status=status)


def _answer_earlier_vote(deps: Deps, pair_token: str, request: gr.Request) -> VoteOutcome:
    """A vote whose token names a pair shown before this one: "already saved" when that vote is stored."""
    with user_errors(), annotate_transaction(deps) as session:
        user = current_user(deps, request, session)
        earlier = _earlier_vote(session, user, pair_token)
        return VoteOutcome(*_next_view(session, deps.settings, user), cast=earlier, status=ALREADY_SAVED)


def _cast(vote: Vote) -> CastVote:
    return CastVote(vote.choice, vote.left_candidate_id, vote.right_candidate_id)


def _earlier_vote(session: Session, user: CurrentUser, pair_token: str) -> CastVote:
    """The caller's vote stored under `pair_token`; `gr.Error` when there is none (the pair was skipped, reloaded
    or expired before a vote was stored)."""
    vote = session.scalar(select(Vote).where(Vote.client_submission_id == pair_token))
    if vote is None or vote.annotator_id != user.id:
        raise error(
            "This vote is for a pair that is no longer shown (it was skipped, reloaded or expired), so nothing was "
            "stored; vote on the pair shown now."
        )
    return _cast(vote)


def skip_pair(deps: Deps, shown: ShownPair | None, request: gr.Request) -> PairView:
    """Give the shown pair back (it is not offered to this annotator again) and show the next one."""
    with user_errors(), annotate_transaction(deps) as session:
        user = current_user(deps, request, session)
        if shown is not None:
            skip_assignment(session, assignment_id=shown.assignment_id, annotator_id=user.id)
        return _next_view(session, deps.settings, user)


def reveal_scores(deps: Deps, cast: CastVote | None) -> str:
    """HTML: the active scorer's scores of the two candidates just voted on, and whether it agreed.

    Only a version that passed the promotion gate's accuracy floor has its scores shown (`ScoredItem.passed_floor`
    is True); a version below the floor, or one with no gate record (promoted by hand, or gated before the floor
    existed), gets a line saying the scores stay hidden. The verdict comes from the scoring service's memory: no DB
    query, and no forward when it is not True.
    """
    if cast is None or deps.scoring is None or not deps.settings.reveal_scores_after_vote:
        return ""
    served = deps.scoring.served
    if served is not None and served.passed_floor is not True:
        return _scores_hidden(served.name)
    try:
        scored = deps.scoring.score_candidates([cast.left_candidate_id, cast.right_candidate_id])
    except NoScorerYet:
        return '<div class="jrm-reveal">No scorer yet: the first model version is still being trained.</div>'
    except (InvalidInput, RuntimeError) as exc:
        return f'<div class="jrm-reveal">The scorer could not score this pair: {text(exc)}</div>'
    left, right = scored[cast.left_candidate_id], scored[cast.right_candidate_id]
    if left.passed_floor is not True or right.passed_floor is not True:  # the serving version changed meanwhile
        return _scores_hidden(left.version_name)
    return (
        f'<div class="jrm-reveal">Scorer {text(left.version_name)}: left {left.score:.3f} · right '
        f"{right.score:.3f} — {text(_agreement(cast.choice, left.score - right.score))}</div>"
    )


def _scores_hidden(version_name: str) -> str:
    return (f'<div class="jrm-reveal">Scores stay hidden: the active model ({text(version_name)}) has not yet beaten '
            "the accuracy floor.</div>")


def _agreement(choice: str, margin: float) -> str:
    """How the scorer's left-minus-right margin relates to the annotator's choice."""
    if choice in ("tie", "both_bad"):
        label = "a tie" if choice == "tie" else "both bad"
        return f"you called it {label}; the scorer's margin is {abs(margin):.3f}."
    if margin == 0:
        return "the scorer sees no difference."
    agreed = (margin > 0) == (choice == "left")
    return "the scorer agrees with you." if agreed else "the scorer prefers the other edit."
