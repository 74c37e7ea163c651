"""The bulk import path: rows checked and blobs written before the transaction, then bulk INSERTs."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import sessionmaker

from storage import import_writer
from storage.db import transaction
from storage.errors import InvalidInput
from storage.importers import import_editreward
from storage.models import Candidate, Pair, Task, Vote
from storage.repository import record_vote
from storage.users import create_user, deactivate
from tests.storage.test_interchange import editreward_records, row_counts, write_editreward


def many_records(tasks: int) -> list[dict]:
    """`tasks` tasks of 3 candidates, each with its 3 pairs voted once."""
    records = []
    for t in range(tasks):
        for a, b in ((0, 1), (0, 2), (1, 2)):
            records.append(
                {
                    "prompt": f"edit {t}",
                    "path_src": f"{t}/src.png",
                    "path1": f"{t}/m{a}.png",
                    "path2": f"{t}/m{b}.png",
                    "model1": f"m{a}",
                    "model2": f"m{b}",
                    "tie_case": False,
                }
            )
    return records


def test_bad_row_in_the_middle_stores_nothing(factory, settings, tmp_path):
    records = many_records(4)
    records[5]["tie_case"] = "maybe"
    json_path, images_root = write_editreward(tmp_path, records)
    with transaction(factory) as session:
        before = row_counts(session)
    message = r"^train\.json row 6: 'tie_case' must be true/false or 0/1, got 'maybe'$"
    with pytest.raises(InvalidInput, match=message), transaction(factory) as session:
        import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    with transaction(factory) as session:
        assert row_counts(session) == before


def test_missing_image_in_the_middle_names_the_row(factory, settings, tmp_path):
    json_path, images_root = write_editreward(tmp_path, many_records(3))
    (images_root / "1" / "m2.png").unlink()
    message = r"^train\.json row 5: path2 '1/m2.png': the image file is missing$"
    with pytest.raises(InvalidInput, match=message), transaction(factory) as session:
        import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    with transaction(factory) as session:
        assert session.scalar(select(Vote.id)) is None and session.scalar(select(Task.id)) is None


def test_reimport_adds_nothing_and_counts_pairs(factory, settings, tmp_path):
    json_path, images_root = write_editreward(tmp_path, many_records(5))
    with transaction(factory) as session:
        first = import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    assert (first.rows, first.tasks, first.candidates, first.votes) == (15, 5, 15, 15)
    with transaction(factory) as session:
        counts = row_counts(session)
        assert [p.vote_count for p in session.scalars(select(Pair))] == [1] * 15
        assert {v.provenance for v in session.scalars(select(Vote))} == {"import"}
        assert {v.source for v in session.scalars(select(Vote))} == {str(json_path.resolve())}
    with transaction(factory) as session:
        again = import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    assert (again.tasks, again.candidates, again.votes, again.votes_existing) == (0, 0, 0, 15)
    with transaction(factory) as session:
        assert row_counts(session) == counts


def test_a_repeated_row_in_one_file_is_counted_once(factory, settings, tmp_path):
    records = editreward_records()
    json_path, images_root = write_editreward(tmp_path, [*records, records[0]])
    with transaction(factory) as session:
        summary = import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    assert (summary.rows, summary.votes, summary.votes_existing) == (4, 3, 1)


def test_new_candidates_pair_with_the_stored_ones(factory, settings, tmp_path):
    json_path, images_root = write_editreward(tmp_path, many_records(1))
    first = tmp_path / "first.json"
    first.write_text(json.dumps(many_records(1)[:1]), encoding="utf-8")  # m0 vs m1
    with transaction(factory) as session:
        import_editreward(session, path=first, images_root=images_root, settings=settings)
    with transaction(factory) as session:  # adds m2, so two more pairs
        summary = import_editreward(session, path=json_path, images_root=images_root, settings=settings)
        assert (summary.tasks, summary.candidates, summary.votes) == (0, 1, 2)
        assert len(session.scalars(select(Pair)).all()) == 3
        assert len(session.scalars(select(Candidate)).all()) == 3


def _short_timeout_factory(engine) -> sessionmaker:
    """Sessions that wait at most 1 s for SQLite's write lock (the app waits 30 s), as storage.db begins them."""
    if engine.dialect.name != "sqlite":
        return sessionmaker(engine, expire_on_commit=False)
    short = create_engine(engine.url, connect_args={"timeout": 1.0, "check_same_thread": False})

    @event.listens_for(short, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA busy_timeout=1000")
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(short, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return sessionmaker(short, expire_on_commit=False)


def test_votes_land_while_an_import_runs(engine, factory, settings, tmp_path, monkeypatch):
    json_path, images_root = write_editreward(tmp_path / "first", many_records(1))
    with transaction(factory) as session:
        import_editreward(session, path=json_path, images_root=images_root, settings=settings)
        task = session.scalars(select(Task)).one()
        left, right = (c.id for c in session.scalars(select(Candidate).order_by(Candidate.id)).all()[:2])
    started, voted = threading.Event(), threading.Event()
    write_blob = import_writer.write_upload_blob

    calls = []

    def paused_write(**kwargs):  # the import stops midway through its files until the annotator's vote is in
        calls.append(1)
        if len(calls) == 30:
            started.set()
            assert voted.wait(10), "the vote did not land within 10 s"
        return write_blob(**kwargs)

    monkeypatch.setattr(import_writer, "write_upload_blob", paused_write)
    json_path, images_root = write_editreward(tmp_path / "second", many_records(20))
    outcome = {}

    def run_import() -> None:
        with transaction(factory) as session:
            outcome["summary"] = import_editreward(session, path=json_path, images_root=images_root, settings=settings)

    thread = threading.Thread(target=run_import)
    thread.start()
    try:
        assert started.wait(10)
        with transaction(_short_timeout_factory(engine)) as session:
            record_vote(
                session,
                task_id=task.id,
                left_candidate_id=left,
                right_candidate_id=right,
                choice="tie",
                client_submission_id=uuid.uuid4().hex,
                settings=settings,
            )
    finally:
        voted.set()
        thread.join(30)
    summary = outcome["summary"]  # task 0 has the same pictures in both files: its 3 votes were there
    assert (summary.votes, summary.votes_existing) == (57, 3)
    with transaction(factory) as session:
        assert len(session.scalars(select(Vote)).all()) == 3 + 1 + 57


def test_a_deactivated_annotator_is_refused_and_nothing_is_stored(factory, settings, tmp_path):
    records = [{**record, "annotator": "ann-1"} for record in many_records(2)]
    json_path, images_root = write_editreward(tmp_path, records)
    with transaction(factory) as session:
        create_user(session, name="ann-1", role="annotator")
        deactivate(session, name="ann-1")
    message = r"^train\.json row 1: user 'ann-1' is deactivated; an admin must reactivate them before they vote\.$"
    with pytest.raises(InvalidInput, match=message), transaction(factory) as session:
        import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    with transaction(factory) as session:
        assert session.scalar(select(Task.id)) is None
