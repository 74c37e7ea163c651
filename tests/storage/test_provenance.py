"""Provenance of votes and tasks, the vote selection every reader shares, and daily vote caps."""

from __future__ import annotations

import pytest

from storage import repository as repo
from storage import stats
from storage.caps import DailyCapReached, votes_today
from storage.errors import InvalidInput
from storage.models import AnnotatorFlag, Vote
from storage.provenance import ALL_VOTES, VoteSelection, default_provenances, vote_selection
from storage.settings import SettingsError, load_settings
from storage.users import set_daily_cap


def test_bad_provenance_and_source_are_refused_before_anything_is_written(session, settings, make_task, vote):
    task, (a, b) = make_task(n=2)
    with pytest.raises(InvalidInput, match="provenance must be one of human, demo, import"):
        vote(task, a, b, provenance="simulated")
    with pytest.raises(InvalidInput, match="source has 1025 characters; shorten it to at most 1024"):
        vote(task, a, b, provenance="import", source="x" * 1025)
    with pytest.raises(InvalidInput, match="provenance must be one of"):
        repo.create_task(session, source_image_id=task.source_image_id, instruction="x", provenance="bot",
                         settings=settings)
    assert session.query(Vote).count() == 0


def test_a_vote_keeps_its_provenance_and_source(session, make_task, vote):
    task, (a, b) = make_task(n=2)
    cast = vote(task, a, b, provenance="import", source="/data/editreward/train.json").vote
    assert (cast.provenance, cast.source) == ("import", "/data/editreward/train.json")
    assert task.provenance == "human" and task.source is None  # a task made in the app


def _three_votes(make_task, make_user, vote) -> dict[str, int]:
    task, (a, b, c) = make_task(n=3)
    ann = make_user()
    ids = {
        "human": vote(task, a, b, annotator_id=ann.id).vote.id,
        "demo": vote(task, a, c, annotator_id=make_user().id, provenance="demo").vote.id,
        "import": vote(task, b, c, provenance="import", source="f.json").vote.id,
    }
    return ids | {"annotator": ann.id}


def test_selection_by_provenance_and_excluded_annotators(session, make_task, make_user, vote):
    ids = _three_votes(make_task, make_user, vote)
    read = lambda selection: [v.vote_id for v in stats.training_votes(session, selection=selection)]  # noqa: E731
    assert read(ALL_VOTES) == [ids["human"], ids["demo"], ids["import"]]
    assert read(VoteSelection(("human", "import"))) == [ids["human"], ids["import"]]
    assert read(VoteSelection(("demo",))) == [ids["demo"]]
    # Excluding an annotator drops their votes; anonymous imported votes stay.
    assert read(VoteSelection(("human", "import"), (ids["annotator"],))) == [ids["import"]]
    with pytest.raises(InvalidInput, match="non-empty subset"):
        VoteSelection(("robots",))
    assert VoteSelection.from_json(VoteSelection(("import", "human"), (3,)).to_json()) == VoteSelection(
        ("human", "import"), (3,)
    )


def test_demo_votes_count_by_default_only_in_a_demo_only_store(session, settings, make_task, make_user, vote):
    task, (a, b, c) = make_task(n=3)
    assert default_provenances(session) == ("human", "import", "demo")  # empty: nothing but the demo to come
    vote(task, a, b, annotator_id=make_user().id, provenance="demo")
    assert vote_selection(session, settings=settings).provenances == ("demo", "human", "import")
    vote(task, a, c, annotator_id=make_user().id)  # the first human vote
    assert vote_selection(session, settings=settings).provenances == ("human", "import")
    demo_too = load_settings(environ={"JRM_TRAIN_PROVENANCES": "demo, human"}, data_dir=settings.data_dir)
    assert vote_selection(session, settings=demo_too).provenances == ("demo", "human")


def test_flagged_annotators_are_excluded_until_cleared(session, settings, make_task, make_user, vote):
    ids = _three_votes(make_task, make_user, vote)
    flag = AnnotatorFlag(annotator_id=ids["annotator"], flagged=True, reasons={"codes": ["too_fast"], "text": []})
    session.add(flag)
    session.flush()
    assert vote_selection(session, settings=settings).excluded_annotators == (ids["annotator"],)
    keep = load_settings(environ={"JRM_EXCLUDE_FLAGGED": "0"}, data_dir=settings.data_dir)
    assert vote_selection(session, settings=keep).excluded_annotators == ()
    flag.cleared_at = flag.checked_at
    session.flush()
    assert vote_selection(session, settings=settings).excluded_annotators == ()


def test_bad_vote_settings_name_the_variable():
    with pytest.raises(SettingsError, match="JRM_TRAIN_PROVENANCES names robots"):
        load_settings(environ={"JRM_TRAIN_PROVENANCES": "human,robots"})
    with pytest.raises(SettingsError, match="JRM_DAILY_VOTE_CAP must be >= 0"):
        load_settings(environ={"JRM_DAILY_VOTE_CAP": "-1"})
    with pytest.raises(SettingsError, match="JRM_SAMPLING='smart' is not one of coverage, active"):
        load_settings(environ={"JRM_SAMPLING": "smart"})


def test_a_daily_cap_refuses_the_next_vote_but_not_a_resend(session, tmp_path, make_task, make_user, vote):
    capped = load_settings(environ={"JRM_DAILY_VOTE_CAP": "2"}, data_dir=tmp_path)
    task, (a, b, c) = make_task(n=3)
    ann = make_user()
    first = vote(task, a, b, annotator_id=ann.id, settings=capped)
    vote(task, a, c, annotator_id=ann.id, settings=capped)
    with pytest.raises(DailyCapReached, match="today's 2 votes, the daily cap"):
        vote(task, b, c, annotator_id=ann.id, settings=capped)
    again = vote(task, a, b, annotator_id=ann.id, client_submission_id=first.vote.client_submission_id,
                 settings=capped)
    assert not again.created  # a resend of a stored vote is answered, not refused
    vote(task, b, c, provenance="demo", annotator_id=ann.id, settings=capped)  # simulated votes are not capped
    assert votes_today(session, annotator_id=ann.id) == 3
    with pytest.raises(DailyCapReached):
        from storage.annotation_queue import next_pair

        next_pair(session, annotator_id=ann.id, settings=capped)


def test_a_users_own_cap_wins_over_the_stores(session, settings, make_task, make_user, vote):
    task, (a, b, c) = make_task(n=3)
    ann = make_user()
    with pytest.raises(InvalidInput, match="whole number from 0 to"):
        set_daily_cap(session, name=ann.name, cap=-3)
    set_daily_cap(session, name=ann.name, cap=1)
    vote(task, a, b, annotator_id=ann.id)
    with pytest.raises(DailyCapReached, match="today's 1 votes"):
        vote(task, a, c, annotator_id=ann.id)
    set_daily_cap(session, name=ann.name, cap=0)  # back to the store's setting: no cap
    vote(task, a, c, annotator_id=ann.id)


def test_active_sampling_ranks_by_priority_alone_and_coverage_by_votes_first(
    session, tmp_path, make_task, make_user, vote
):
    from storage.annotation_queue import next_pair, set_pair_priorities
    from storage.models import Pair

    coverage = load_settings(environ={"JRM_OVERLAP_TARGET": "3"}, data_dir=tmp_path)
    active = load_settings(environ={"JRM_OVERLAP_TARGET": "3", "JRM_SAMPLING": "active"}, data_dir=tmp_path)
    task, (a, b, c) = make_task(n=3)
    voted = vote(task, a, b, annotator_id=make_user().id, settings=coverage).vote.pair_id  # 1 of 3 votes
    pairs = [p.id for p in session.query(Pair).order_by(Pair.id)]
    set_pair_priorities(session, priorities={voted: 0.9, **{p: 0.1 for p in pairs if p != voted}})
    assert next_pair(session, annotator_id=make_user().id, settings=active).pair_id == voted
    assert next_pair(session, annotator_id=make_user().id, settings=coverage).pair_id != voted


def test_votes_over_time_are_hourly_within_two_days_and_split_by_provenance(session, make_task, make_user, vote):
    from datetime import timedelta

    from storage.models import utcnow
    from storage.stats import votes_over_time

    assert votes_over_time(session) == ("day", [])
    task, (a, b, c) = make_task(n=3)
    now = utcnow().replace(minute=30, second=0, microsecond=0)
    vote(task, a, b, annotator_id=make_user().id).vote.created_at = now - timedelta(hours=3)
    vote(task, a, c, annotator_id=make_user().id, provenance="demo").vote.created_at = now - timedelta(hours=3)
    vote(task, b, c, annotator_id=make_user().id).vote.created_at = now
    session.flush()
    unit, rows = votes_over_time(session)
    earlier, latest = (now - timedelta(hours=3)).strftime("%Y-%m-%d %H:00"), now.strftime("%Y-%m-%d %H:00")
    assert unit == "hour"
    assert sorted(rows) == sorted([(earlier, "demo", 1), (earlier, "human", 1), (latest, "human", 1)])
    vote(task, c, a, annotator_id=make_user().id).vote.created_at = now - timedelta(days=5)
    session.flush()
    unit, rows = votes_over_time(session)
    assert unit == "day" and sum(n for *_, n in rows) == 4
