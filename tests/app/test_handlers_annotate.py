"""Annotate handlers, called as Gradio would call them: pairs, idempotent votes, skips, reveals, escaping."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image
from sqlalchemy import event, func, select, update

from app.auth import LOCAL_USER
from app.handlers.annotate import (
    ALREADY_SAVED,
    NO_PAIR_HTML,
    CastVote,
    check_rationale,
    dimension_scores,
    load_pair,
    parse_choice,
    reveal_scores,
    skip_pair,
    submit_vote,
)
from app.scoring import ScoringService
from storage.db import engine_of, transaction
from storage.images import store_pil_image
from storage.models import Assignment, Pair, User, Vote
from storage.repository import add_candidate, create_task
from storage.users import deactivate
from tests.app.handler_support import add_users, as_user, make_deps, set_gate

NO_DIMENSIONS = (False, 0.0, 0.0, 0.0)


@pytest.fixture
def deps(app_store):
    add_users(app_store, ann="annotator")
    return make_deps(app_store)


def _fill_pairs(deps, except_task: int | None = None) -> None:
    """Mark pairs as having all the votes they need, so next_pair offers none of them."""
    with transaction(deps.factory) as session:
        session.execute(update(Pair).where(Pair.task_id != (except_task or 0)).values(filled=100))


def _votes(deps, **where) -> list[Vote]:
    with deps.factory() as session:
        return list(session.scalars(select(Vote).filter_by(**where)))


def test_load_pair_shows_a_reserved_pair_as_the_assignment_orders_it(deps):
    view = load_pair(deps, as_user("ann"))
    assert view.shown is not None and len(view.shown.submission_id) == 32
    assert all(Path(path).is_file() for path in (view.source, view.left, view.right))
    assert view.left != view.right and "Instruction:" in view.instruction
    with deps.factory() as session:
        assignment = session.get(Assignment, view.shown.assignment_id)
        user = session.scalar(select(User).where(User.name == "ann"))
    assert assignment.annotator_id == user.id and assignment.status == "open"
    again = load_pair(deps, as_user("ann"))  # a reload shows the same pair, same sides, with a fresh id
    assert (again.shown.assignment_id, again.left, again.right) == (view.shown.assignment_id, view.left, view.right)
    assert again.shown.submission_id != view.shown.submission_id


def test_a_double_submission_stores_one_vote_and_shows_the_next_pair(deps):
    view = load_pair(deps, as_user("ann"))
    first = submit_vote(deps, view.shown, "Left is better", "  A kept the sky  ", *NO_DIMENSIONS, view.token,
                        as_user("ann"))
    second = submit_vote(deps, view.shown, "Left is better", "A kept the sky", *NO_DIMENSIONS, view.token,
                         as_user("ann"))
    votes = _votes(deps, client_submission_id=view.shown.submission_id)
    assert len(votes) == 1
    vote = votes[0]
    assert (vote.choice, vote.rationale, vote.dimension_scores) == ("left", "A kept the sky", None)
    assert (vote.left_candidate_id, vote.right_candidate_id) == (view.shown.left_candidate_id,
                                                                  view.shown.right_candidate_id)
    assert vote.time_spent_ms is not None and vote.time_spent_ms >= 0
    assert first.status == "Vote saved." and "already saved" in second.status
    assert first.shown.assignment_id != view.shown.assignment_id  # the next pair came with the answer
    assert first.progress == "Your votes so far: **1**"
    assert first.cast.choice == "left"


def test_a_vote_sent_twice_at_once_is_stored_by_the_first_request_and_the_second_shares_its_answer(deps):
    """The duplicate waits for the first request in the app instead of opening a transaction of its own."""
    view = load_pair(deps, as_user("ann"))
    engine, inserting, callers, querying = engine_of(deps.factory), threading.Event(), [], set()

    def hold_the_insert(conn, cursor, statement, parameters, context, executemany):
        querying.add(threading.get_ident())
        if statement.startswith("INSERT INTO votes") and not inserting.is_set():
            inserting.set()
            time.sleep(0.5)  # the duplicate arrives while the first request is still storing the vote

    def vote():
        callers.append(threading.get_ident())
        return submit_vote(deps, view.shown, "left", "kept the sky", *NO_DIMENSIONS, view.token, as_user("ann"))

    event.listen(engine, "before_cursor_execute", hold_the_insert)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(vote)
            assert inserting.wait(30)
            second = pool.submit(vote)
            first, second = first.result(timeout=60), second.result(timeout=60)
    finally:
        event.remove(engine, "before_cursor_execute", hold_the_insert)
    assert first.status == "Vote saved." and second.status == ALREADY_SAVED
    assert second.shown is first.shown and second.token == first.token  # the page ends on the same next pair
    assert len(_votes(deps, client_submission_id=view.token)) == 1
    assert callers[1] != callers[0] and callers[1] not in querying, "the duplicate ran statements of its own"


def test_a_vote_that_arrives_after_the_page_moved_on_is_not_stored_on_the_next_pair(deps):
    """A second click, a second vote key or a resent request can be served after the first vote moved the session
    to the next pair; its token still names the pair the voter saw, so it is answered "already saved"."""
    view = load_pair(deps, as_user("ann"))
    first = submit_vote(deps, view.shown, "left", "kept the sky", *NO_DIMENSIONS, view.token, as_user("ann"))
    assert first.status == "Vote saved." and first.token == first.shown.submission_id != view.token
    # Gradio hands the handler the session's state as it is now: the next pair.
    late = submit_vote(deps, first.shown, "right", "changed my mind", *NO_DIMENSIONS, view.token, as_user("ann"))
    assert "already saved" in late.status
    assert late.cast.choice == "left" and late.shown.assignment_id == first.shown.assignment_id
    assert len(_votes(deps, client_submission_id=view.token)) == 1
    assert _votes(deps, client_submission_id=first.token) == []  # nothing stored on the pair not yet judged
    voted = submit_vote(deps, late.shown, "tie", "", *NO_DIMENSIONS, late.token, as_user("ann"))
    assert voted.status == "Vote saved."


def test_a_vote_for_a_pair_that_was_skipped_is_refused_and_nothing_is_stored(deps):
    view = load_pair(deps, as_user("ann"))
    after_skip = skip_pair(deps, view.shown, as_user("ann"))
    with pytest.raises(gr.Error, match="no longer shown"):
        submit_vote(deps, after_skip.shown, "left", "", *NO_DIMENSIONS, view.token, as_user("ann"))
    with pytest.raises(gr.Error, match="no longer shown"):  # another annotator's or a made-up token
        submit_vote(deps, after_skip.shown, "left", "", *NO_DIMENSIONS, "not-a-token", as_user("ann"))
    with pytest.raises(gr.Error, match="pair_token must be the text"):
        submit_vote(deps, after_skip.shown, "left", "", *NO_DIMENSIONS, 12, as_user("ann"))
    assert _votes(deps, client_submission_id=view.token) == []
    assert _votes(deps, client_submission_id=after_skip.token) == []


@pytest.mark.parametrize("missing", [None, ""])
def test_a_vote_without_a_token_is_refused_and_stores_nothing(deps, missing):
    view = load_pair(deps, as_user("ann"))
    with pytest.raises(gr.Error, match="pair_token is required"):
        submit_vote(deps, view.shown, "right", "", *NO_DIMENSIONS, missing, as_user("ann"))
    assert _votes(deps, client_submission_id=view.shown.submission_id) == []
    outcome = submit_vote(deps, view.shown, "right", "", *NO_DIMENSIONS, view.token, as_user("ann"))
    assert outcome.status == "Vote saved."  # the same pair with its token is stored


def test_each_annotate_call_reads_the_caller_once(deps):
    """The store's own checks of the annotator find the row the handler read (no second or third users query)."""
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    engine = engine_of(deps.factory)
    view = load_pair(deps, as_user("ann"))
    event.listen(engine, "before_cursor_execute", record)
    try:
        load_pair(deps, as_user("ann"))
        reads_in_load = sum("FROM users" in s for s in statements)
        submit_vote(deps, view.shown, "left", "kept the sky", *NO_DIMENSIONS, view.token, as_user("ann"))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert reads_in_load == 1
    assert sum("FROM users" in s for s in statements) == 2


def test_dimension_scores_are_stored_only_when_the_annotator_rates_them(deps):
    view = load_pair(deps, as_user("ann"))
    submit_vote(deps, view.shown, "tie", "", True, -2.0, 1.0, 0.0, view.token, as_user("ann"))
    (vote,) = _votes(deps, client_submission_id=view.shown.submission_id)
    assert vote.choice == "tie" and vote.rationale is None
    assert vote.dimension_scores == {"instruction_following": -2.0, "quality": 1.0, "preservation": 0.0}
    assert dimension_scores(False, 1.0, 1.0, 1.0) is None


def test_a_short_rationale_is_refused_and_nothing_is_stored(app_store):
    add_users(app_store, ann="annotator")
    deps = make_deps(app_store, rationale_min_chars=10)
    view = load_pair(deps, as_user("ann"))
    with pytest.raises(gr.Error, match="at least 10 characters"):
        submit_vote(deps, view.shown, "Right is better", "too short", *NO_DIMENSIONS, view.token, as_user("ann"))
    assert _votes(deps, client_submission_id=view.shown.submission_id) == []
    assert check_rationale(" long enough now ", deps.settings) == "long enough now"


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (("left", 42, False, 0, 0, 0), "rationale must be text"),
        ((["left"], "kept it", False, 0, 0, 0), "Unknown choice"),
        ((None, "kept it", False, 0, 0, 0), "Unknown choice"),
        (("left", "kept it", "yes", 0, 0, 0), "rate_dimensions must be true or false"),
        (("left", "kept it", True, "much", 0, 0), "Instruction following must be a number from -2 to 2"),
        (("left", "kept it", True, 0, 3, 0), "Image quality must be a number from -2 to 2"),
        (("left", "kept it", True, 0, 0, float("nan")), "Preservation of the rest must be a number from -2 to 2"),
        (("left", "kept it", True, 0, True, 0), "Image quality must be a number from -2 to 2"),
    ],
)
def test_a_vote_with_a_malformed_field_is_refused_by_name_and_the_pair_stays(deps, form, message):
    """API callers send raw JSON (Gradio does not preprocess the vote's inputs): every field is checked here."""
    view = load_pair(deps, as_user("ann"))
    with pytest.raises(gr.Error, match=message):
        submit_vote(deps, view.shown, *form, view.token, as_user("ann"))
    assert _votes(deps, client_submission_id=view.shown.submission_id) == []
    again = load_pair(deps, as_user("ann"))
    assert again.shown.assignment_id == view.shown.assignment_id  # nothing lost: the same pair is still held
    saved = submit_vote(deps, again.shown, "left", "kept it", True, -2, 1.0, 0, again.token, as_user("ann"))
    assert saved.status == "Vote saved."
    (vote,) = _votes(deps, client_submission_id=again.shown.submission_id)
    assert vote.dimension_scores == {"instruction_following": -2.0, "quality": 1.0, "preservation": 0.0}


def test_choices_are_button_labels_or_stored_names():
    assert [parse_choice(v) for v in ("Left is better", "Right is better", "Tie", "Both bad")] == [
        "left", "right", "tie", "both_bad"]
    assert parse_choice("both_bad") == "both_bad"
    with pytest.raises(gr.Error, match="Unknown choice"):
        parse_choice("<b>up</b>")


def test_skip_gives_the_pair_back_and_shows_another(deps):
    view = load_pair(deps, as_user("ann"))
    after = skip_pair(deps, view.shown, as_user("ann"))
    assert after.shown.assignment_id != view.shown.assignment_id
    with deps.factory() as session:
        assert session.get(Assignment, view.shown.assignment_id).status == "skipped"
    assert _votes(deps, origin="annotate") == []


def test_when_no_pair_is_left_the_tab_says_so_and_a_vote_is_refused(deps):
    _fill_pairs(deps)
    view = load_pair(deps, as_user("ann"))
    assert view.shown is None and view.instruction == NO_PAIR_HTML and view.left is None
    with pytest.raises(gr.Error, match="No pair is shown"):
        submit_vote(deps, None, "left", "", *NO_DIMENSIONS, "", as_user("ann"))


def test_instructions_are_shown_as_text_never_as_html_or_markdown(deps, app_settings):
    hostile = "<img src=x onerror=alert(1)> [click me](javascript:alert(1)) **bold**"
    with transaction(deps.factory) as session:
        images = [store_pil_image(session, image=Image.new("RGB", (32, 32), color), settings=app_settings)
                  for color in ("red", "green", "blue")]
        task = create_task(session, source_image_id=images[0].id, instruction=hostile, settings=app_settings)
        for number, image in enumerate(images[1:], start=1):
            add_candidate(session, task_id=task.id, image_id=image.id, generator=f"gen-{number}")
        task_id = task.id
    _fill_pairs(deps, except_task=task_id)
    view = load_pair(deps, as_user("ann"))
    assert view.shown.task_id == task_id
    assert "<img" not in view.instruction and "&lt;img src=x onerror=alert(1)&gt;" in view.instruction
    assert "<a" not in view.instruction and "[click me](javascript:alert(1))" in view.instruction
    assert "<strong>" not in view.instruction and "**bold**" in view.instruction


def _voted(deps) -> CastVote:
    view = load_pair(deps, as_user("ann"))
    return submit_vote(deps, view.shown, "left", "", *NO_DIMENSIONS, view.token, as_user("ann")).cast


def test_reveal_shows_the_active_versions_scores_and_agreement(app_store, scoring_service):
    add_users(app_store, ann="annotator")
    set_gate(app_store.factory, app_store.version_id, passed_floor=True)
    scoring_service.refresh()  # the poll that picks up the verdict
    deps = make_deps(app_store, scoring=scoring_service)
    view = load_pair(deps, as_user("ann"))
    outcome = submit_vote(deps, view.shown, "left", "", *NO_DIMENSIONS, view.token, as_user("ann"))
    html = reveal_scores(deps, outcome.cast)
    scores = scoring_service.score_candidates([view.shown.left_candidate_id, view.shown.right_candidate_id])
    left, right = scores[view.shown.left_candidate_id].score, scores[view.shown.right_candidate_id].score
    assert app_store.version_name in html and f"left {left:.3f}" in html and f"right {right:.3f}" in html
    assert ("agrees with you" in html) == (left > right)
    assert reveal_scores(make_deps(app_store, scoring=scoring_service, reveal_scores_after_vote=False),
                         outcome.cast) == ""


@pytest.mark.parametrize("passed_floor", [False, None], ids=["below-the-floor", "gated-before-the-floor"])
def test_reveal_hides_the_scores_of_a_version_that_has_not_passed_the_floor(app_store, scoring_service, passed_floor):
    add_users(app_store, ann="annotator")
    set_gate(app_store.factory, app_store.version_id, passed_floor=passed_floor)
    scoring_service.refresh()
    deps = make_deps(app_store, scoring=scoring_service)
    cast = _voted(deps)
    statements = []

    def listen(_connection, _cursor, statement, *_args) -> None:  # every SQL statement the reveal runs
        statements.append(statement)

    event.listen(app_store.engine, "before_cursor_execute", listen)
    try:
        html = reveal_scores(deps, cast)
    finally:
        event.remove(app_store.engine, "before_cursor_execute", listen)
    assert html == (f'<div class="jrm-reveal">Scores stay hidden: the active model ({app_store.version_name}) has not '
                    "yet beaten the accuracy floor.</div>")
    assert statements == []  # the verdict comes from the scorer's memory, and nothing was scored


def test_the_reveal_follows_the_verdict_of_the_version_now_serving(app_store, scoring_service):
    add_users(app_store, ann="annotator")
    set_gate(app_store.factory, app_store.version_id, passed_floor=None)  # a version from before the floor
    scoring_service.refresh()
    deps = make_deps(app_store, scoring=scoring_service)
    cast = _voted(deps)
    assert "Scores stay hidden" in reveal_scores(deps, cast)
    set_gate(app_store.factory, app_store.version_id, passed_floor=True)
    scoring_service.refresh()
    assert f"Scorer {app_store.version_name}: left " in reveal_scores(deps, cast)
    set_gate(app_store.factory, app_store.version_id, passed_floor=False)  # gated again, and below the floor now
    scoring_service.refresh()
    assert "Scores stay hidden" in reveal_scores(deps, cast)


def test_reveal_before_any_version_is_served_says_no_scorer_yet(app_store):
    add_users(app_store, ann="annotator")
    service = ScoringService(app_store.factory, app_store.settings)  # not refreshed: serves nothing yet
    try:
        deps = make_deps(app_store, scoring=service)
        view = load_pair(deps, as_user("ann"))
        outcome = submit_vote(deps, view.shown, "Both bad", "", *NO_DIMENSIONS, view.token, as_user("ann"))
        assert "No scorer yet" in reveal_scores(deps, outcome.cast)
    finally:
        service.stop()


def test_concurrent_annotators_each_have_every_vote_stored_once(app_store):
    names = [f"ann{i}" for i in range(6)]
    add_users(app_store, **dict.fromkeys(names, "annotator"))
    deps = make_deps(app_store)

    def annotate(name: str) -> list[str]:
        statuses = []
        for _ in range(4):
            view = load_pair(deps, as_user(name))
            outcome = submit_vote(deps, view.shown, "tie", "", *NO_DIMENSIONS, view.token, as_user(name))
            statuses.append(outcome.status)
        return statuses

    with ThreadPoolExecutor(len(names)) as pool:  # SQLite: the handlers take turns at the write lock
        answers = list(pool.map(annotate, names))
    assert answers == [["Vote saved."] * 4] * len(names)
    with deps.factory() as session:
        counts = dict(session.execute(select(User.name, func.count(Vote.id)).join(Vote, Vote.annotator_id == User.id)
                                      .where(User.name.in_(names)).group_by(User.name)).all())
    assert counts == dict.fromkeys(names, 4)


def test_without_auth_the_local_admin_votes(app_store):
    deps = make_deps(app_store, auth=False)
    view = load_pair(deps, as_user(None))
    submit_vote(deps, view.shown, "right", "", *NO_DIMENSIONS, view.token, as_user(None))
    with deps.factory() as session:
        local = session.scalar(select(User).where(User.name == LOCAL_USER))
        assert local.role == "admin" and local.password_hash is None
        assert session.scalar(select(func.count()).where(Vote.annotator_id == local.id)) == 1


def test_a_deactivated_or_anonymous_caller_is_refused(deps):
    with transaction(deps.factory) as session:
        deactivate(session, name="ann")
    with pytest.raises(gr.Error, match="deactivated"):
        load_pair(deps, as_user("ann"))
    with pytest.raises(gr.Error, match="Log in first"):
        load_pair(deps, as_user(None))
