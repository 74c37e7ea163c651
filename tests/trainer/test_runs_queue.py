"""The run queue's SQL functions on SQLite and PostgreSQL: enqueue, cancel, claim, heartbeat, stale runs, triggers."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import timedelta
from itertools import count

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.db import transaction
from storage.errors import InvalidInput, NotFound
from storage.models import Candidate, Image, ModelVersion, Pair, Task, TrainingRun, Vote, utcnow
from storage.settings import SettingsError, load_settings
from trainer import runs_queue
from trainer.data import HELDOUT, TRAIN, split_of, task_key

# --- helpers ---------------------------------------------------------------------------------------------------


def add_votes(session: Session, *, split: str, votes: int, origin: str = "annotate") -> list[int]:
    """A task on the wanted side of the held-out split with `votes` votes on one pair; their ids."""
    sha = uuid.uuid4().hex * 2
    instruction = next(f"make it blue {i}" for i in count() if split_of(task_key(sha, f"make it blue {i}")) == split)
    image = Image(sha256=sha, width=8, height=8, format="png", byte_size=1)
    session.add(image)
    session.flush()
    task = Task(source_image_id=image.id, instruction=instruction, origin=origin)
    session.add(task)
    session.flush()
    left, right = (Candidate(task_id=task.id, image_id=image.id, generator=name) for name in ("a", "b"))
    session.add_all([left, right])
    session.flush()
    pair = Pair(task_id=task.id, candidate_a_id=left.id, candidate_b_id=right.id)
    session.add(pair)
    session.flush()
    rows = [Vote(task_id=task.id, pair_id=pair.id, left_candidate_id=left.id, right_candidate_id=right.id,
                 choice="left", client_submission_id=uuid.uuid4().hex) for _ in range(votes)]
    session.add_all(rows)
    session.flush()
    return [vote.id for vote in rows]


def add_run(session: Session, **values) -> TrainingRun:
    run = TrainingRun(**{"status": "queued", "trigger": "manual", "params": {}, **values})
    session.add(run)
    session.flush()
    return run


# --- enqueue and cancel ----------------------------------------------------------------------------------------


def test_enqueue_validates_params_and_queues(session):
    run = runs_queue.enqueue_run(session, params={"lm_weight": 0.5, "max_steps": 3})
    assert (run.status, run.trigger, run.params) == ("queued", "manual", {"lm_weight": 0.5, "max_steps": 3})
    with pytest.raises(InvalidInput, match="Unknown training parameter"):
        runs_queue.enqueue_run(session, params={"lm_wieght": 0.5})
    with pytest.raises(InvalidInput, match="lm_weight"):
        runs_queue.enqueue_run(session, params={"lm_weight": -1.0})
    with pytest.raises(NotFound):
        runs_queue.enqueue_run(session, params={}, requested_by_id=999)


def test_cancel_queued_and_running_runs(session):
    queued, running = add_run(session), add_run(session, status="running", started_at=utcnow())
    assert runs_queue.cancel_run(session, run_id=queued.id).status == "cancelled"
    cancelled = runs_queue.cancel_run(session, run_id=running.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert "while training" in cancelled.error
    with pytest.raises(InvalidInput, match="already cancelled"):
        runs_queue.cancel_run(session, run_id=queued.id)
    with pytest.raises(NotFound, match="No training run with id 12345"):
        runs_queue.cancel_run(session, run_id=12345)


# --- claiming --------------------------------------------------------------------------------------------------


def test_claim_takes_the_oldest_queued_run_once(session):
    first, second = add_run(session), add_run(session)
    add_run(session, status="cancelled")
    claimed = runs_queue.claim_next_run(session, worker_id="w1")
    assert claimed.id == first.id
    assert (claimed.status, claimed.worker_id) == ("running", "w1")
    assert claimed.started_at is not None and claimed.heartbeat_at is not None
    assert runs_queue.claim_next_run(session, worker_id="w2").id == second.id
    assert runs_queue.claim_next_run(session, worker_id="w3") is None


def test_concurrent_claimers_take_each_run_exactly_once(factory):
    with transaction(factory) as session:
        queued = {add_run(session).id for _ in range(12)}
    claims: list[tuple[str, int]] = []
    start = threading.Barrier(4)

    def claimer(name: str) -> None:
        start.wait()
        while True:
            with transaction(factory) as session:
                run = runs_queue.claim_next_run(session, worker_id=name)
                if run is None:
                    return
                claims.append((name, run.id))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    claimed_ids = [run_id for _, run_id in claims]
    assert sorted(claimed_ids) == sorted(queued)  # every run once, none twice
    with factory() as session:
        rows = session.scalars(select(TrainingRun)).all()
    assert {(run.worker_id, run.id) for run in rows} == set(claims)


def test_heartbeat_stops_once_the_run_is_cancelled(session):
    run = add_run(session, status="running", worker_id="w1", started_at=utcnow())
    assert runs_queue.beat(session, run_id=run.id, worker_id="w1")
    assert not runs_queue.beat(session, run_id=run.id, worker_id="w2")  # not its run
    assert runs_queue.held_status(session, run_id=run.id, worker_id="w2") == "taken"
    runs_queue.cancel_run(session, run_id=run.id)
    assert not runs_queue.beat(session, run_id=run.id, worker_id="w1")
    assert runs_queue.held_status(session, run_id=run.id, worker_id="w1") == "cancelled"


# --- stale runs ------------------------------------------------------------------------------------------------


def test_runs_with_an_expired_heartbeat_are_failed_with_the_reason(session):
    now = utcnow()
    stale = add_run(session, status="running", worker_id="dead", started_at=now - timedelta(minutes=5),
                    heartbeat_at=now - timedelta(seconds=90))
    fresh = add_run(session, status="running", worker_id="alive", started_at=now, heartbeat_at=now)
    queued = add_run(session)
    mine = add_run(session, status="running", worker_id="me", started_at=now, heartbeat_at=now - timedelta(hours=1))
    recovered = runs_queue.recover_stale_runs(session, stale_after_s=60, alive_worker_id="me")
    assert [run.id for run in recovered] == [stale.id]
    session.expire_all()
    assert session.get(TrainingRun, stale.id).status == "failed"
    error = session.get(TrainingRun, stale.id).error
    assert error.startswith("worker heartbeat expired at ") and "the worker or its training process died" in error
    assert "(worker dead)" in error and session.get(TrainingRun, stale.id).worker_id is None
    assert session.get(TrainingRun, fresh.id).status == "running"
    assert session.get(TrainingRun, queued.id).status == "queued"
    assert session.get(TrainingRun, mine.id).status == "running"  # a worker never declares itself dead


# --- automatic triggers ----------------------------------------------------------------------------------------


def test_threshold_counts_new_training_votes_only(session):
    add_votes(session, split=TRAIN, votes=4)
    add_votes(session, split=HELDOUT, votes=10)  # held-out tasks never trigger a retrain
    assert runs_queue.new_training_votes(session, after_vote_id=0) == 4
    assert runs_queue.enqueue_if_threshold(session, min_votes=5) is None
    add_votes(session, split=TRAIN, votes=1)
    run = runs_queue.enqueue_if_threshold(session, min_votes=5)
    assert (run.status, run.trigger, run.params) == ("queued", "threshold", {})
    assert runs_queue.enqueue_if_threshold(session, min_votes=5) is None  # one is already queued


def test_threshold_counts_from_the_last_succeeded_runs_watermark(session):
    trained = add_votes(session, split=TRAIN, votes=6)
    add_run(session, status="succeeded", vote_watermark=trained[-1], finished_at=utcnow())
    add_run(session, status="failed", vote_watermark=0, finished_at=utcnow())  # a failed run moves nothing
    assert runs_queue.last_vote_watermark(session) == trained[-1]
    assert runs_queue.enqueue_if_threshold(session, min_votes=5) is None
    add_votes(session, split=TRAIN, votes=5)
    assert runs_queue.enqueue_if_threshold(session, min_votes=5).trigger == "threshold"


def test_running_run_blocks_automatic_enqueues(session):
    add_votes(session, split=TRAIN, votes=10)
    add_run(session, status="running", started_at=utcnow())
    assert runs_queue.enqueue_if_threshold(session, min_votes=1) is None
    assert runs_queue.enqueue_if_idle(session, trigger="schedule") is None


def test_scheduled_run_is_queued_when_idle(session):
    assert runs_queue.enqueue_if_idle(session, trigger="schedule").trigger == "schedule"


def test_first_run_only_on_a_fresh_install_with_demo_data(session):
    add_votes(session, split=TRAIN, votes=3)
    assert runs_queue.enqueue_first_run(session) is None  # no demo data: an operator's own store
    add_votes(session, split=TRAIN, votes=3, origin="demo")
    run = runs_queue.enqueue_first_run(session, max_steps=150)
    assert (run.trigger, run.params) == ("first_run", {"max_steps": 150})  # capped: a scorer within minutes
    runs_queue.cancel_run(session, run_id=run.id)
    assert runs_queue.enqueue_first_run(session) is None  # a run happened once: never again


def test_first_run_params_without_a_cap_are_the_defaults():
    assert runs_queue.first_run_params(0) == {}
    assert runs_queue.first_run_params(40) == {"max_steps": 40}


def test_no_first_run_when_a_version_is_active(session):
    add_votes(session, split=TRAIN, votes=3, origin="demo")
    session.add(ModelVersion(name="v0001", path="v0001", backbone="tiny", status="active"))
    session.flush()
    assert runs_queue.enqueue_first_run(session) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [("-1", "JRM_FIRST_RUN_MAX_STEPS must be >= 0"), ("fast", "JRM_FIRST_RUN_MAX_STEPS='fast' is not a valid int")],
)
def test_a_bad_first_run_cap_is_refused_with_its_name(raw, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings({"JRM_FIRST_RUN_MAX_STEPS": raw})
    assert load_settings({}).first_run_max_steps == 150  # the default: a scorer within minutes
