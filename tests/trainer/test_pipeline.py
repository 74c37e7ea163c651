"""trainer.pipeline: create_run → run_training_job → a gated version; progress, heartbeat, failures, re-runs."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from storage.db import session_factory, transaction
from storage.demo import build_demo
from storage.errors import InvalidInput, NotFound
from storage.models import ModelVersion, TrainingRun, Vote
from tests.conftest import make_test_engine
from trainer.data import load_snapshot
from trainer.pipeline import RunCancelled, RunReporter, create_run, parse_params, run_training_job
from trainer.registry import verify_version_files, version_dir
from trainer.train import ProgressEvent

DEMO_TASKS = 16  # ≈ 100 votes; seed 0 puts 3 of the 16 tasks in the held-out split
FAST = {"max_steps": 3, "batch_size": 4, "lm_weight": 0.5}


def link_backbones(settings, backbone_cache) -> None:
    """Point `<data_dir>/backbones` at the session's prebuilt tiny presets (no rebuild per test)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    target = settings.data_dir / "backbones"
    if not target.exists():
        target.symlink_to(backbone_cache, target_is_directory=True)


def build_store(factory, settings, tasks: int = DEMO_TASKS) -> None:
    with transaction(factory) as session:
        build_demo(session, tasks=tasks, seed=0, settings=settings)


@pytest.fixture
def demo(factory, settings, backbone_cache):
    link_backbones(settings, backbone_cache)
    build_store(factory, settings)
    return factory


@pytest.fixture
def sqlite_demo(settings, backbone_cache):
    """`demo` on SQLite only, for the slower tests whose SQL the both-backend tests already cover."""
    engine, teardown = make_test_engine("sqlite", settings)
    factory = session_factory(engine)
    link_backbones(settings, backbone_cache)
    build_store(factory, settings)
    yield factory
    teardown()


def queue(factory, params: dict, trigger: str = "manual") -> int:
    with transaction(factory) as session:
        return create_run(session, params=params, trigger=trigger).id


# --- parameters ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"lm_weight": -1}, "lm_weight must be >= 0"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"epoch": 3}, "Unknown training parameter"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"lm_weight": "0.5"}, "lm_weight must be a number"),
        ({"promotion_tolerance": -0.1}, "promotion_tolerance"),
        ({"promote": "no"}, "promote must be true or false"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_params_are_refused_with_a_readable_message(params, match):
    with pytest.raises(InvalidInput, match=match):
        parse_params(params)


def test_params_split_into_the_configs():
    params = parse_params({"backbone": "tiny-idefics3", "lm_weight": 0, "epochs": 2, "lr": 3e-3, "promote": False})
    assert params.jrm.backbone == "tiny-idefics3" and params.jrm.lm_weight == 0
    assert params.train.epochs == 2 and params.train.lr == 3e-3
    assert params.promote is False and params.promotion_tolerance == 0.01
    assert params.to_dict()["batch_size"] == params.train.batch_size


def test_create_run_validates(factory):
    with transaction(factory) as session:
        run = create_run(session, params={"lm_weight": 0.0}, trigger="manual")
        assert run.status == "queued" and run.params == {"lm_weight": 0.0} and run.id is not None
        with pytest.raises(InvalidInput, match="lm_weight"):
            create_run(session, params={"lm_weight": -2}, trigger="manual")
        with pytest.raises(InvalidInput, match="trigger"):
            create_run(session, params={}, trigger="whenever")
        with pytest.raises(NotFound, match="user 999"):
            create_run(session, params={}, trigger="manual", requested_by_id=999)
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 1


# --- the job ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_training_job_publishes_a_gated_version(demo, settings):
    run_id = queue(demo, FAST)
    version = run_training_job(demo, run_id=run_id, settings=settings)
    assert version is not None and version.status == "active" and version.run_id == run_id  # first version
    verify_version_files(version_dir(settings, version))
    with demo() as session:
        run = session.get(TrainingRun, run_id)
        watermark = session.scalar(select(func.max(Vote.id)))
    assert run.status == "succeeded" and run.error is None
    assert run.progress == 1.0 and run.step == run.total_steps == 3 and run.eta_s == 0.0
    assert run.started_at is not None and run.finished_at is not None and run.heartbeat_at is not None
    assert run.history["step"] == [3] and set(run.loss) == {"total", "pref", "lm"}
    assert run.metrics["heldout_accuracy"] == version.metrics["heldout_accuracy"]
    assert 0.0 <= run.metrics["heldout_accuracy"] <= 1.0 and run.metrics["heldout_votes"] > 0
    assert "pairwise_accuracy" in run.metrics and "ece" in str(run.metrics)
    snapshot = load_snapshot(run.snapshot_path)
    assert snapshot.fingerprint == run.snapshot_fingerprint and run.vote_watermark == watermark
    assert version.config["snapshot_fingerprint"] == snapshot.fingerprint
    assert version.config["jrm"]["lm_weight"] == 0.5 and version.config["train"]["max_steps"] == 3


@pytest.mark.slow
def test_rerun_trains_on_the_saved_snapshot_and_is_gated(sqlite_demo, settings):
    demo = sqlite_demo
    run_id = queue(demo, {**FAST, "lm_weight": 0.0})
    first = run_training_job(demo, run_id=run_id, settings=settings)
    with pytest.raises(InvalidInput, match="succeeded"):
        run_training_job(demo, run_id=run_id, settings=settings)  # a finished run is not re-run
    with demo() as session:
        assert session.get(TrainingRun, run_id).status == "succeeded"
    build_store(demo, settings, tasks=DEMO_TASKS + 2)  # more votes arrive
    with transaction(demo) as session:  # the worker re-queues the run (e.g. after a crash)
        run = session.get(TrainingRun, run_id)
        fingerprint, watermark = run.snapshot_fingerprint, run.vote_watermark
        run.status = "queued"
    second = run_training_job(demo, run_id=run_id, settings=settings)
    with demo() as session:
        run = session.get(TrainingRun, run_id)
        assert (run.snapshot_fingerprint, run.vote_watermark) == (fingerprint, watermark)  # the same data
        assert session.scalar(select(func.max(Vote.id))) > watermark
        statuses = {v.name: v.status for v in session.scalars(select(ModelVersion))}
    # The same data, seed and params give the same held-out accuracy: the gate keeps the new one (tolerance 0.01).
    assert second.metrics["heldout_accuracy"] == first.metrics["heldout_accuracy"]
    assert statuses == {first.name: "retired", second.name: "active"}


@pytest.mark.slow
def test_no_promote_leaves_a_candidate(sqlite_demo, settings):
    demo = sqlite_demo
    run_id = queue(demo, {**FAST, "promote": False, "max_steps": 1})
    version = run_training_job(demo, run_id=run_id, settings=settings)
    assert version.status == "candidate"


def test_bad_params_run_is_failed_with_a_readable_error(factory, settings):
    with transaction(factory) as session:  # written directly (e.g. by an older app): create_run would refuse it
        run = TrainingRun(status="queued", trigger="manual", params={"lm_weight": -1})
        session.add(run)
        session.flush()
        run_id = run.id
    with pytest.raises(InvalidInput, match="lm_weight"):
        run_training_job(factory, run_id=run_id, settings=settings)
    with factory() as session:
        run = session.get(TrainingRun, run_id)
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 0
    assert run.status == "failed" and run.finished_at is not None
    assert run.error.startswith("Invalid training parameters: lm_weight must be >= 0")


def test_a_store_without_votes_fails_the_run(factory, settings):
    run_id = queue(factory, FAST)
    with pytest.raises(InvalidInput, match="no votes to snapshot"):
        run_training_job(factory, run_id=run_id, settings=settings)
    with factory() as session:
        run = session.get(TrainingRun, run_id)
    assert run.status == "failed" and "no votes to snapshot" in run.error


def test_unknown_run(factory, settings):
    with pytest.raises(NotFound, match="No training run with id 42"):
        run_training_job(factory, run_id=42, settings=settings)


# --- progress and heartbeat ------------------------------------------------------------------------------------


def _event(step: int, total: int = 10) -> ProgressEvent:
    return ProgressEvent(
        step=step,
        total_steps=total,
        progress=step / total,
        epoch=0,
        loss={"total": 1.0, "pref": 0.7, "lm": 0.6},
        lr=1e-3,
        elapsed_s=step,
        eta_s=total - step,
    )


def _running_run(factory) -> int:
    run_id = queue(factory, {})
    with transaction(factory) as session:
        session.get(TrainingRun, run_id).status = "running"
    return run_id


def test_reporter_throttles_writes_and_keeps_the_whole_curve(factory):
    run_id = _running_run(factory)
    reporter = RunReporter(factory, run_id, interval_s=3600)
    reporter(_event(1))
    reporter(_event(2))  # inside the interval: not written
    with factory() as session:
        run = session.get(TrainingRun, run_id)
        assert (run.step, run.progress, run.total_steps, run.eta_s) == (1, 0.1, 10, 9.0)
    reporter(_event(10))  # the last step is always written
    with factory() as session:
        run = session.get(TrainingRun, run_id)
    assert run.step == 10 and run.progress == 1.0 and run.history["step"] == [1, 2, 10]
    assert run.loss == {"total": 1.0, "pref": 0.7, "lm": 0.6} and run.heartbeat_at is not None


def test_reporter_stops_a_cancelled_run(factory):
    run_id = _running_run(factory)
    with transaction(factory) as session:
        session.get(TrainingRun, run_id).status = "cancelled"
    with pytest.raises(RunCancelled, match="no longer running"):
        RunReporter(factory, run_id)(_event(1))
    with factory() as session:
        assert session.get(TrainingRun, run_id).status == "cancelled"


def test_heartbeat_is_written_while_a_step_runs(factory):
    run_id = _running_run(factory)
    with RunReporter(factory, run_id, heartbeat_s=0.05):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with factory() as session:
                if session.get(TrainingRun, run_id).heartbeat_at is not None:
                    break
            time.sleep(0.05)
    with factory() as session:
        assert session.get(TrainingRun, run_id).heartbeat_at is not None
