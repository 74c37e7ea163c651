"""A run is trained only by its claimer: `claim_run`, the training CLI's `--run-id` and the pipeline's start.

The store tests run on SQLite and PostgreSQL (`engine` fixture). The races use threads, each with its own session
(its own connection), started together by a barrier, as tests/storage/test_concurrency.py does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.db import session_factory, transaction
from storage.errors import InvalidInput, NotFound
from storage.models import TrainingRun, utcnow
from tests.conftest import make_test_engine
from trainer import pipeline, runs_queue
from trainer.__main__ import EXIT_BAD_INPUT, _claim, main
from trainer.worker import training_command

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 8  # races per test: more chances for the claimers' statements to interleave


def add_run(factory, **values) -> int:
    with transaction(factory) as session:
        run = TrainingRun(**{"status": "queued", "trigger": "manual", "params": {"max_steps": 1}, **values})
        session.add(run)
        session.flush()
        return run.id


def read_run(factory, run_id: int) -> TrainingRun:
    with factory() as session:
        return session.get(TrainingRun, run_id)


def running_elsewhere(factory, worker_id: str = "worker:elsewhere:7:abc123") -> int:
    return add_run(factory, status="running", worker_id=worker_id, started_at=utcnow(), heartbeat_at=utcnow())


# --- claim_run -------------------------------------------------------------------------------------------------


def test_claim_run_takes_a_queued_run_and_accepts_its_own(factory, session):
    run_id = add_run(factory)
    claimed = runs_queue.claim_run(session, run_id=run_id, worker_id="cli:a")
    assert (claimed.status, claimed.worker_id) == ("running", "cli:a") and claimed.started_at is not None
    again = runs_queue.claim_run(session, run_id=run_id, worker_id="cli:a")  # the worker's child, same id
    assert (again.id, again.status, again.worker_id) == (run_id, "running", "cli:a")


def test_claim_run_refuses_another_claimers_run_and_finished_ones(factory):
    taken = running_elsewhere(factory)
    with transaction(factory) as session, pytest.raises(InvalidInput) as refused:
        runs_queue.claim_run(session, run_id=taken, worker_id="cli:me")
    assert str(refused.value).startswith(f"run {taken} is running on worker worker:elsewhere:7:abc123; ")
    assert f"python -m trainer.worker cancel {taken}" in str(refused.value)
    assert read_run(factory, taken).worker_id == "worker:elsewhere:7:abc123"  # untouched
    anonymous = add_run(factory, status="running", started_at=utcnow())  # a trainer from before worker ids
    done = add_run(factory, status="succeeded", finished_at=utcnow())
    with transaction(factory) as session:
        with pytest.raises(InvalidInput, match=f"run {anonymous} is running on a trainer that recorded no worker"):
            runs_queue.claim_run(session, run_id=anonymous, worker_id="cli:me")
        with pytest.raises(InvalidInput, match=f"run {done} is succeeded; only queued runs can be trained"):
            runs_queue.claim_run(session, run_id=done, worker_id="cli:me")
        with pytest.raises(NotFound, match="No training run with id 4242"):
            runs_queue.claim_run(session, run_id=4242, worker_id="cli:me")


def test_worker_ids_name_their_kind_and_differ():
    first, second = runs_queue.new_worker_id("cli"), runs_queue.new_worker_id("cli")
    assert first.startswith(f"cli:{os.uname().nodename}:{os.getpid()}:") and first != second


# --- the race --------------------------------------------------------------------------------------------------


def _race(factory, claimers: list, *, read_first: bool) -> list[str]:
    """Run each `claimers[i](session)` in its own thread and session, all at once; the ids of those that won."""
    barrier, winners, errors = threading.Barrier(len(claimers)), [], []

    def attempt(claim) -> None:
        try:
            if not read_first:
                barrier.wait()
            with transaction(factory) as session:
                if read_first:  # both see the run queued before either writes: the guarded UPDATE decides
                    session.scalar(select(TrainingRun.status).where(TrainingRun.status == "queued").limit(1))
                    barrier.wait()
                won = claim(session)
            if won:
                winners.append(won)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=attempt, args=(claim,)) for claim in claimers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a claimer hung"
    if errors:
        raise errors[0]
    return winners


def _by_hand(run_id: int, worker_id: str):
    """`python -m trainer train --run-id N`'s claim: the run, or None when it was refused."""

    def claim(session) -> str | None:
        try:
            return runs_queue.claim_run(session, run_id=run_id, worker_id=worker_id).worker_id
        except InvalidInput as exc:
            assert "is running on worker " in str(exc)
            return None

    return claim


def _by_worker(worker_id: str):
    def claim(session) -> str | None:
        run = runs_queue.claim_next_run(session, worker_id=worker_id)
        return None if run is None else run.worker_id

    return claim


@pytest.mark.parametrize("rival", ["cli", "worker"])
def test_two_claimers_at_once_exactly_one_wins(factory, engine, rival):
    # SQLite's BEGIN IMMEDIATE serialises whole transactions, so there both cannot read before either writes.
    orders = [False, True] if engine.dialect.name == "postgresql" else [False]
    for read_first in orders:
        for _ in range(ROUNDS):
            run_id = add_run(factory)
            other = _by_hand(run_id, "cli:b") if rival == "cli" else _by_worker("worker:b")
            winners = _race(factory, [_by_hand(run_id, "cli:a"), other], read_first=read_first)
            assert len(winners) == 1, winners
            row = read_run(factory, run_id)
            assert (row.status, row.worker_id) == ("running", winners[0])
            with transaction(factory) as session:  # done: the next round's worker claims only the new run
                runs_queue.fail_run(session, run_id=run_id, error="race round over")


# --- the training command line ---------------------------------------------------------------------------------


def test_train_run_id_of_a_running_run_is_refused_with_exit_2(factory, db_url, settings, monkeypatch, capsys):
    monkeypatch.setenv("JRM_DATA_DIR", str(settings.data_dir))
    taken = running_elsewhere(factory)
    before = read_run(factory, taken)
    assert main(["train", "--run-id", str(taken), "--database", db_url]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith(f"error: run {taken} is running on worker worker:elsewhere:7:abc123; ")
    assert error.strip().count("\n") == 0
    after = read_run(factory, taken)
    assert (after.status, after.worker_id, after.heartbeat_at, after.error) == (
        "running", before.worker_id, before.heartbeat_at, None)  # fmt: skip


def test_train_run_id_refusal_is_exit_status_2_from_the_shell(settings, tmp_path):
    engine, teardown = make_test_engine("sqlite", settings)
    try:
        taken = running_elsewhere(session_factory(engine))
        env = {**os.environ, "JRM_DATA_DIR": str(settings.data_dir), "JRM_TORCH_THREADS": "1", "PYTHONPATH": str(ROOT)}
        env.pop("JRM_DATABASE_URL", None)
        result = subprocess.run([sys.executable, "-m", "trainer", "train", "--run-id", str(taken)], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        teardown()
    assert result.returncode == 2, result.stderr
    assert f"error: run {taken} is running on worker worker:elsewhere:7:abc123; " in result.stderr


def test_worker_id_without_run_id_is_bad_input(capsys):
    assert main(["train", "--worker-id", "worker:x"]) == EXIT_BAD_INPUT
    assert "--worker-id names the worker that claimed --run-id" in capsys.readouterr().err


def test_the_cli_claims_for_itself_or_for_the_worker_that_claimed(factory):
    queued = add_run(factory)
    assert _claim(factory, run_id=queued, params={}, worker_id="cli:me") == (queued, None)
    assert read_run(factory, queued).worker_id == "cli:me"
    add_run(factory)
    with transaction(factory) as session:
        claimed = runs_queue.claim_next_run(session, worker_id="worker:w").id
    assert _claim(factory, run_id=claimed, params={}, worker_id="worker:w") == (claimed, None)  # the worker's child
    run_id, refusal = _claim(factory, run_id=claimed, params={}, worker_id="cli:someone")
    assert run_id == claimed and refusal.startswith(f"run {claimed} is running on worker worker:w; ")


def test_a_new_cli_run_is_never_seen_queued(factory):
    run_id, refusal = _claim(factory, run_id=None, params={"max_steps": 2}, worker_id="cli:me")
    assert refusal is None
    row = read_run(factory, run_id)
    assert (row.status, row.trigger, row.worker_id, row.params) == ("running", "cli", "cli:me", {"max_steps": 2})
    with transaction(factory) as session:
        assert runs_queue.claim_next_run(session, worker_id="worker:w") is None


def test_the_worker_passes_its_id_to_the_training_process(settings):
    command = training_command(replace(settings, train_processes=1), 4, "worker:h:1:abc")
    assert command[1:] == ["-m", "trainer", "train", "--run-id", "4", "--worker-id", "worker:h:1:abc"]


# --- the pipeline's start --------------------------------------------------------------------------------------


def test_start_run_accepts_only_its_claimers_run(factory):
    mine = add_run(factory, status="running", worker_id="worker:w", started_at=utcnow(), progress=0.5, step=3)
    assert pipeline._start_run(factory, mine, "worker:w") == {"max_steps": 1}
    row = read_run(factory, mine)
    assert (row.status, row.worker_id, row.progress, row.step) == ("running", "worker:w", 0.0, 0)
    queued = add_run(factory)
    pipeline._start_run(factory, queued, "cli:me")  # queued: claimed here, atomically
    assert (read_run(factory, queued).status, read_run(factory, queued).worker_id) == ("running", "cli:me")
    with pytest.raises(InvalidInput, match=f"run {mine} is running on worker worker:w; "):
        pipeline._start_run(factory, mine, "cli:me")


def test_run_training_job_leaves_another_workers_run_alone(factory, settings):
    taken = running_elsewhere(factory)
    with pytest.raises(InvalidInput, match=f"run {taken} is running on worker "):
        pipeline.run_training_job(factory, run_id=taken, settings=settings)
    row = read_run(factory, taken)
    assert (row.status, row.worker_id, row.error, row.finished_at) == (
        "running", "worker:elsewhere:7:abc123", None, None)  # fmt: skip
