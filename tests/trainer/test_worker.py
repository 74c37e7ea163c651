"""The worker: its scheduler and job store, the CLI, and real processes — training, `kill -9`, restarts, two workers.

The crash-safety scenario trains for real (tiny preset, a 10-task demo store, a few steps per run). Only the
two-worker claiming test replaces training with a short stand-in process, so that it can push several runs
through two real workers quickly; what it checks is that no run is executed twice, not the training.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from storage.db import make_engine, session_factory, transaction, upgrade
from storage.demo import build_demo
from storage.models import ModelVersion, TrainingRun, utcnow
from storage.settings import Settings, load_settings
from tests.trainer.test_runs_queue import add_votes
from trainer import runs_queue, worker
from trainer.registry import TMP_PREFIX, load_scorer, promote_version, verify_version_files, version_dir
from trainer.worker import scheduler as worker_scheduler
from trainer.worker.__main__ import main as worker_cli

REPO = Path(__file__).parents[2]
FAST = {
    "JRM_QUEUE_POLL_S": "0.5",
    "JRM_HEARTBEAT_S": "1",
    "JRM_STALE_AFTER_S": "6",
    "JRM_RETRAIN_CHECK_MINUTES": "0",
    "JRM_TORCH_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
}
LONG_RUN = {"epochs": 500, "log_every": 1}  # far longer than any test waits: it is killed or cancelled mid-way
TIMEOUT_S = 150
Store = tuple[str, sessionmaker[Session], sessionmaker[Session]]  # URL, sessions, read-only sessions for polling


# --- helpers ---------------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], object], *, what: str, timeout: float = TIMEOUT_S, every: float = 0.25):
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def read_run(factory: sessionmaker[Session], run_id: int) -> TrainingRun:
    with factory() as session:
        return session.get(TrainingRun, run_id)


def run_in(factory: sessionmaker[Session], run_id: int, *statuses: str) -> TrainingRun | None:
    run = read_run(factory, run_id)
    return run if run is not None and run.status in statuses else None


def _with_exit_code(run: TrainingRun) -> TrainingRun | None:
    """The run once the worker added the exit code to the error the training process recorded."""
    return run if "exited with code" in (run.error or "") else None


def count_runs(factory: sessionmaker[Session], status: str) -> int:
    with factory() as session:
        return len(session.scalars(select(TrainingRun.id).where(TrainingRun.status == status)).all())


def gone(process: psutil.Process) -> bool:
    """Exited (a zombie nobody reaped counts: PID 1 in a container may not reap orphans)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def enqueue(factory: sessionmaker[Session], params: dict) -> int:
    with transaction(factory) as session:
        return runs_queue.enqueue_run(session, params=params).id


def training_child(worker_process: subprocess.Popen) -> psutil.Process:
    """The worker's training process (its only child)."""
    children = wait_for(lambda: psutil.Process(worker_process.pid).children(), what="the training process")
    return children[0]


def start_worker(tmp_path: Path, url: str, data_dir: Path, *, name: str, code: str | None = None) -> subprocess.Popen:
    """`python -m trainer.worker run` (or `python -c code`) in its own process, output in tmp_path/<name>.out."""
    env = {**os.environ, **FAST, "JRM_DATA_DIR": str(data_dir), "JRM_DATABASE_URL": url}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "trainer.worker", "run"]
    with (tmp_path / f"{name}.out").open("ab") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def assert_registry_consistent(factory: sessionmaker[Session], settings: Settings) -> str:
    """Every version folder belongs to a row and matches its manifest; the active version loads: its name."""
    with factory() as session:
        versions = session.scalars(select(ModelVersion)).all()
        for version in versions:
            verify_version_files(version_dir(settings, version))
        folders = {p.name for p in settings.registry_dir.iterdir() if not p.name.startswith(TMP_PREFIX)}
        assert folders == {version.path for version in versions}
        loaded = load_scorer(session, settings=settings)
    assert loaded is not None, "no active version"
    return loaded[0].name


@pytest.fixture
def demo_store(tmp_path, settings, backbone_cache) -> Iterator[Store]:
    """A SQLite store with a 3-task demo (14 training, 6 held-out votes) and the tiny backbone in its cache."""
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    factory = session_factory(engine)
    with transaction(factory) as session:
        build_demo(session, tasks=3, seed=7, settings=settings, size=48)
    shutil.copytree(Path(backbone_cache) / "tiny", settings.data_dir / "backbones" / "tiny")
    yield settings.resolved_database_url, factory, session_factory(engine, read_only=True)
    engine.dispose()


# --- real processes: crash safety ------------------------------------------------------------------------------


def test_first_run_failures_kills_cancel_and_restart_with_real_training(tmp_path, settings, demo_store, capsys):
    url, factory, reader = demo_store
    first_worker = start_worker(tmp_path, url, settings.data_dir, name="worker1")
    second_worker = None
    try:
        # A fresh install (demo data, no version, no run): the worker queues and trains the first run unasked.
        # Its version goes through the gate like any other: 3 tasks are too few to judge, so a researcher promotes it.
        first = wait_for(lambda: run_in(reader, 1, "succeeded", "failed"), what="the first run")
        assert (first.trigger, first.status) == ("first_run", "succeeded"), first.error
        with reader() as session:
            v1 = session.scalars(select(ModelVersion)).one()
        assert v1.status == "rejected" and v1.reason.startswith("too few held-out votes to judge")
        with transaction(factory) as session:
            promote_version(session, version_id=v1.id, reason="worker test", settings=settings)
        assert assert_registry_consistent(reader, settings) == "v0001"

        # Params that fail in the training process: failed, with the child's message and its exit code.
        bad = enqueue(factory, {"backbone": str(tmp_path / "no-such-backbone"), "max_steps": 1})
        failed = wait_for(
            lambda: run_in(reader, bad, "succeeded") or _with_exit_code(read_run(reader, bad)),
            what="the failing run to be recorded",
        )
        assert failed.status == "failed" and "Could not load backbone" in failed.error
        assert "(The training process exited with code 1; full log: " in failed.error

        # kill -9 of the training process mid-training: failed with a readable reason; v0001 stays active.
        killed = enqueue(factory, LONG_RUN)
        wait_for(lambda: read_run(reader, killed).step >= 1, what="run training steps")
        os.kill(training_child(first_worker).pid, signal.SIGKILL)
        failed = wait_for(lambda: run_in(reader, killed, "failed"), what="the killed run to be failed")
        assert failed.error.startswith("The training process was killed by SIGKILL. Last lines of")
        assert assert_registry_consistent(reader, settings) == "v0001"
        assert worker_cli(["logs", str(killed), "--database", url]) == 0  # the log is kept and readable
        assert f"-m trainer train --run-id {killed}" in capsys.readouterr().out

        # Cancel a running run (its process is starting up): the worker stops the process; the run stays cancelled.
        cancelled = enqueue(factory, LONG_RUN)
        child = training_child(first_worker)
        assert worker_cli(["cancel", str(cancelled), "--database", url]) == 0
        wait_for(lambda: gone(child), what="the child to stop")
        assert read_run(reader, cancelled).status == "cancelled"

        # kill -9 of the worker mid-training: its training process dies with it, the row keeps "running" until a
        # worker sees the heartbeat expired; a publish's leftover temp folder is swept on start.
        orphaned = enqueue(factory, LONG_RUN)
        wait_for(lambda: read_run(reader, orphaned).step >= 1, what="run training steps")
        child = training_child(first_worker)
        os.kill(first_worker.pid, signal.SIGKILL)
        first_worker.wait()
        wait_for(lambda: gone(child), what="the training process to die with its worker", timeout=20)
        assert read_run(reader, orphaned).status == "running"
        leftover = settings.registry_dir / f"{TMP_PREFIX}crashed-publish"
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"half written")
        assert assert_registry_consistent(reader, settings) == "v0001"

        second_worker = start_worker(tmp_path, url, settings.data_dir, name="worker2")
        failed = wait_for(lambda: run_in(reader, orphaned, "failed"), what="the stale run to be failed")
        assert failed.error.startswith("worker heartbeat expired at ")
        assert "the worker or its training process died" in failed.error
        assert not leftover.exists()

        # …and the next run trains and is promoted.
        last = enqueue(factory, {"max_steps": 2, "promotion_tolerance": 0.99, "gate_floor": False})
        done = wait_for(lambda: run_in(reader, last, "succeeded", "failed"), what="the last run")
        assert done.status == "succeeded", done.error
        assert assert_registry_consistent(reader, settings) == "v0002"
    finally:
        for process in (first_worker, second_worker):
            if process is not None:
                stop_worker(process)
    assert second_worker.returncode == 0  # SIGTERM: a clean stop


# --- real processes: two workers claiming ----------------------------------------------------------------------

# The stand-in for `python -m trainer train` in the claiming test only: it notes that it ran, sleeps briefly and
# marks its run succeeded the way the pipeline does, so several runs go through two workers in seconds.
STAND_IN = textwrap.dedent("""
    import os, sys, time
    from sqlalchemy import create_engine, text
    run_id, ledger = int(sys.argv[1]), sys.argv[2]
    with open(ledger, "a") as f:
        f.write(f"{run_id}\\n")
    time.sleep(0.3)
    with create_engine(os.environ["JRM_DATABASE_URL"]).begin() as connection:
        connection.execute(text("UPDATE training_runs SET status = 'succeeded' WHERE id = :id"), {"id": run_id})
""")

STAND_IN_WORKER = textwrap.dedent("""
    import sys
    from storage.settings import load_settings
    from trainer.worker import run_worker
    run_worker(load_settings(), command=lambda _, run_id, _w: [sys.executable, "-c", {code!r}, str(run_id), {ledger!r}])
""")


def test_two_worker_processes_execute_each_run_exactly_once(tmp_path, settings, engine, factory, db_url):
    with transaction(factory) as session:
        run_ids = [runs_queue.enqueue_run(session, params={"max_steps": 1}).id for _ in range(8)]
    ledger = tmp_path / "executed.txt"
    code = STAND_IN_WORKER.format(code=STAND_IN, ledger=str(ledger))
    workers = [start_worker(tmp_path, db_url, settings.data_dir, name=f"w{i}", code=code) for i in range(2)]
    try:
        reader = session_factory(engine, read_only=True)
        wait_for(lambda: count_runs(reader, "succeeded") == 8, what="all runs to succeed", timeout=120)
    finally:
        for process in workers:
            stop_worker(process)
    assert sorted(int(line) for line in ledger.read_text().split()) == run_ids  # each exactly once
    with factory() as session:
        runs = session.scalars(select(TrainingRun)).all()
    assert all(run.worker_id and run.log_path for run in runs)
    assert all(process.returncode == 0 for process in workers)


# --- the scheduler and its job store ---------------------------------------------------------------------------


def _jobs_in_store(factory: sessionmaker[Session]) -> set[str]:
    with factory() as session:
        return set(session.scalars(text(f"SELECT id FROM {worker.JOBS_TABLE}")))


def test_retrain_jobs_live_in_the_store_and_restarts_replace_them(settings, factory, db_url):
    scheduled = replace(settings, database_url=db_url, retrain_cron="0 3 * * *")
    for _ in range(2):  # a restart replaces the jobs instead of adding copies
        worker.start_background_worker(scheduled).stop()
    assert _jobs_in_store(factory) == {worker.THRESHOLD_JOB, worker.SCHEDULE_JOB}
    handle = worker.start_background_worker(scheduled)
    try:
        job = handle.scheduler.get_job(worker.SCHEDULE_JOB)
        assert str(job.trigger) == "cron[month='*', day='*', day_of_week='*', hour='3', minute='0']"
        assert handle.scheduler.get_job(worker.CONSUMER_JOB, "local").max_instances == 1
    finally:
        handle.stop()
    worker.start_background_worker(replace(scheduled, retrain_cron="", retrain_check_minutes=0)).stop()
    assert _jobs_in_store(factory) == set()  # switched off in the config: gone from the store


def pending_trigger(factory: sessionmaker[Session]) -> str | None:
    with factory() as session:  # a fresh session per look: on SQLite an open one would hold the write lock
        run = runs_queue.pending_run(session)
        return run.trigger if run is not None else None


def test_store_jobs_fire_and_queue_runs(settings, factory, db_url):
    live = replace(settings, database_url=db_url, retrain_min_votes=2, retrain_cron="0 3 * * *")
    with transaction(factory) as session:
        add_votes(session, split="train", votes=2)
    the_worker = worker.Worker(live)
    scheduler = worker.build_scheduler(the_worker, BackgroundScheduler)
    scheduler.remove_job(worker.CONSUMER_JOB, "local")  # only the enqueues are under test: nothing claims the runs
    handle = worker.WorkerHandle(the_worker, scheduler)
    scheduler.start()
    try:
        for job_id, trigger in ((worker.THRESHOLD_JOB, "threshold"), (worker.SCHEDULE_JOB, "schedule")):
            scheduler.modify_job(job_id, next_run_time=utcnow())  # fire the stored job now
            wait_for(lambda trigger=trigger: pending_trigger(factory) == trigger, what=f"a {trigger} run", timeout=30)
            with transaction(factory) as session:
                runs_queue.cancel_run(session, run_id=runs_queue.pending_run(session).id)
    finally:
        handle.stop()
    assert the_worker.store_key not in worker_scheduler._workers


# --- the command line ------------------------------------------------------------------------------------------


def test_cli_enqueue_runs_cancel(db_url, factory, capsys):
    assert worker_cli(["enqueue", "--lm-weight", "0.5", "--max-steps", "3", "--database", db_url]) == 0
    assert capsys.readouterr().out.strip() == "queued run 1"
    with factory() as session:
        run = runs_queue.get_run(session, run_id=1)
    assert (run.trigger, run.params) == ("manual", {"lm_weight": 0.5, "max_steps": 3})
    assert worker_cli(["runs", "--database", db_url]) == 0
    assert "queued     manual" in capsys.readouterr().out
    assert worker_cli(["cancel", "1", "--database", db_url]) == 0
    assert capsys.readouterr().out.strip() == "cancelled run 1"
    assert worker_cli(["cancel", "1", "--database", db_url]) == 2
    assert "already cancelled" in capsys.readouterr().err
    assert worker_cli(["enqueue", "--epochs", "0", "--database", db_url]) == 2
    assert "epochs" in capsys.readouterr().err


def test_cli_logs(tmp_path, db_url, factory, capsys):
    assert worker_cli(["logs", "7", "--database", db_url]) == 2
    assert "No training run with id 7" in capsys.readouterr().err
    with transaction(factory) as session:
        run_id = runs_queue.enqueue_run(session, params={}).id
    assert worker_cli(["logs", str(run_id), "--database", db_url]) == 2
    assert "has no log" in capsys.readouterr().err
    log = tmp_path / "train.log"
    with transaction(factory) as session:
        runs_queue.set_log_path(session, run_id=run_id, log_path=str(log))
    assert worker_cli(["logs", str(run_id), "--database", db_url]) == 2
    assert "is missing" in capsys.readouterr().err
    log.write_text("step 1 loss 0.69\nstep 2 loss 0.61\n")
    assert worker_cli(["logs", str(run_id), "--database", db_url]) == 0
    assert capsys.readouterr().out == "step 1 loss 0.69\nstep 2 loss 0.61\n"


# --- small pieces ----------------------------------------------------------------------------------------------


def test_the_child_sees_the_workers_settings(settings):
    tuned = replace(settings, heartbeat_s=1.5, retrain_cron="0 3 * * *", torch_threads=1)
    env = worker.child_environment(tuned)
    assert load_settings(environ=env) == replace(
        tuned, data_dir=settings.data_dir.resolve(), database_url=tuned.resolved_database_url
    )


def test_training_command_uses_accelerate_for_several_processes(settings):
    assert worker.training_command(replace(settings, train_processes=1), 4) == [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "--run-id",
        "4",
    ]
    command = worker.training_command(replace(settings, train_processes=2), 4)
    assert command[1:6] == ["-m", "accelerate.commands.launch", "--num_processes", "2", "-m"]
    assert command[6:] == ["trainer", "train", "--run-id", "4"]


def test_run_log_is_in_the_pipelines_run_folder(settings):
    from trainer.pipeline import run_folder

    assert worker.run_log_path(settings, 3).parent == run_folder(settings, 3)


def test_log_tail_and_exit_descriptions(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "bar 10%\rbar 100%\n")
    tail = worker.log_tail(log, lines=3)
    assert tail == "line 98\nline 99\nbar 100%"
    assert "unreadable" in worker.log_tail(tmp_path / "missing.log")
    assert worker.describe_exit(-9) == "was killed by SIGKILL"
    assert worker.describe_exit(2) == "exited with code 2"
