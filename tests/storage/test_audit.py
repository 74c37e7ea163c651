"""The quality check against the store: votes read as PairVotes, model deltas, flags written, cleared, re-raised."""

from __future__ import annotations

import json
import random

import pytest

from storage import audit
from storage.__main__ import main
from storage.errors import InvalidInput, NotFound
from storage.models import AnnotatorFlag, ModelVersion, Pair, Score
from storage.provenance import ALL_VOTES, vote_selection


def _store(session, make_task, make_user, vote, *, pairs: int = 24) -> dict[str, int]:
    """Three honest annotators who agree with candidate A's superiority 90 % of the time, and one who always
    clicks left whatever is shown (position bias; half the time against the others)."""
    rng = random.Random(0)
    names = {name: make_user() for name in ("ann", "bea", "cid", "clicker")}
    for index in range(pairs):
        task, (a, b) = make_task(n=2, instruction=f"edit {index}")
        for name, user in names.items():
            left, right = (a, b) if rng.random() < 0.5 else (b, a)
            if name == "clicker":
                choice = "left"
            else:
                prefers_a = rng.random() < 0.9
                choice = "left" if (left is a) == prefers_a else "right"
            vote(task, left, right, annotator_id=user.id, choice=choice, time_spent_ms=4000)
    return {name: user.id for name, user in names.items()}


def test_pair_votes_are_canonical_and_oldest_first(session, make_task, make_user, vote):
    task, (a, b) = make_task(n=2)
    ann = make_user()
    vote(task, b, a, annotator_id=ann.id, choice="left", time_spent_ms=2500)  # b shown left, chosen
    vote(task, a, b, choice="right")  # anonymous: no annotator to audit
    (only,) = audit.pair_votes(session, selection=ALL_VOTES)
    assert (only.annotator, only.left_is_a, only.category, only.seconds) == (ann.name, False, "b", 2.5)


def test_version_deltas_read_a_minus_b_from_the_score_cache(session, make_task):
    task, (a, b, c) = make_task(n=3)
    version = ModelVersion(name="v1", path="/x", backbone="tiny", status="active")
    session.add(version)
    session.flush()
    session.add_all([Score(version_id=version.id, candidate_id=a.id, score=1.5),
                     Score(version_id=version.id, candidate_id=b.id, score=0.25)])
    session.flush()
    pair_ab = session.query(Pair).filter_by(candidate_a_id=a.id, candidate_b_id=b.id).one()
    assert audit.version_deltas(session, version_id=version.id) == {pair_ab.id: 1.25}  # c is unscored


def test_flags_are_written_cleared_with_a_reason_and_raised_again_by_a_new_reason(
    session, settings, make_task, make_user, vote
):
    users = _store(session, make_task, make_user, vote)
    report = audit.quality_report(session, selection=ALL_VOTES)
    by_name = {a.name: a for a in report.annotators}
    clicker = next(name for name in by_name if name.startswith("annotator-3"))
    assert by_name[clicker].flagged and "position_bias" in by_name[clicker].reason_codes
    assert not any(a.flagged for name, a in by_name.items() if name != clicker)
    excluded = audit.write_flags(session, report)
    assert excluded[clicker] and vote_selection(session, settings=settings).excluded_annotators == (users["clicker"],)

    with pytest.raises(InvalidInput, match="reason is empty"):
        audit.clear_flag(session, annotator=clicker, cleared_by_id=None, reason="  ")
    with pytest.raises(NotFound, match="is not flagged"):
        audit.clear_flag(session, annotator=next(iter(by_name)), cleared_by_id=None, reason="fine")
    audit.clear_flag(session, annotator=clicker, cleared_by_id=None, reason="the left edits really were better")
    assert vote_selection(session, settings=settings).excluded_annotators == ()
    assert not audit.write_flags(session, report)[clicker]  # the same reasons: the clearance holds

    flag = session.query(AnnotatorFlag).filter_by(annotator_id=users["clicker"]).one()
    flag.cleared_codes = {"codes": []}  # as if the clearance had covered none of today's reasons
    assert audit.write_flags(session, report)[clicker]  # a reason the clearance did not cover flags again
    assert flag.cleared_at is None and flag.cleared_reason is None


def test_cli_agreement_json_and_flag_clearing(session, db_url, make_task, make_user, vote, capsys):
    _store(session, make_task, make_user, vote)
    session.commit()
    assert main(["agreement", "--json", "--write-flags", "--database", db_url]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {"krippendorff_alpha", "annotators", "versions", "provenances"} <= set(payload)
    row = payload["annotators"][0]
    assert {"name", "votes", "left_rate", "left_rate_p", "median_seconds", "model_agreement", "flagged",
            "reasons"} <= set(row)
    flagged = [a["name"] for a in payload["annotators"] if a["flagged"]]
    assert len(flagged) == 1
    with pytest.raises(SystemExit, match="2"):  # argparse: --reason is required
        main(["flags", "clear", flagged[0], "--database", db_url])
    capsys.readouterr()
    assert main(["flags", "clear", flagged[0], "--reason", "checked by hand", "--database", db_url]) == 0
    assert "train again" in capsys.readouterr().out
    assert main(["agreement", "--database", db_url]) == 0
    assert "Krippendorff's alpha" in capsys.readouterr().out


def test_gold_pairs_are_marked_checked_and_cleared(session, db_url, make_task, make_user, vote, capsys):
    task, (a, b) = make_task(n=2)
    ann = make_user()
    vote(task, b, a, annotator_id=ann.id, choice="left")  # chose b
    session.commit()
    pair_id = session.query(Pair).one().id
    with pytest.raises(InvalidInput, match="a gold answer is one of a, b, tie, both_bad"):
        audit.set_gold(session, pair_id=pair_id, answer="left")
    with pytest.raises(NotFound, match="pair 999 does not exist"):
        audit.set_gold(session, pair_id=999, answer="a")
    session.rollback()  # the CLI writes from another connection: hold no SQLite lock here
    assert main(["gold", str(pair_id), "a", "--database", db_url]) == 0
    assert f"pair {pair_id} is a gold pair with answer a" in capsys.readouterr().out
    session.expire_all()
    assert audit.gold_answers(session) == {pair_id: "a"}
    report = audit.quality_report(session, selection=ALL_VOTES)
    assert report.annotators[0].gold_accuracy == 0.0  # chose b where a is known to be better
    session.rollback()
    assert main(["gold", str(pair_id), "--clear", "--database", db_url]) == 0
    session.expire_all()
    assert audit.gold_answers(session) == {}
