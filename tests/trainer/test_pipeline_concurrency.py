"""trainer.pipeline beside the app: votes commit while a run writes files; a run cancelled while publishing stays so."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import datasets
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.db import engine_of, make_engine, transaction
from storage.models import Candidate, ModelVersion, TrainingRun
from storage.repository import record_vote
from tests.trainer.test_pipeline import FAST, NO_FLOOR, demo, queue, sqlite_demo  # noqa: F401 - fixtures
from trainer import judge, pipeline
from trainer.model import JointRewardModel
from trainer.pipeline import RunCancelled, run_folder, run_training_job
from trainer.registry import files as registry_files
from trainer.runs_queue import cancel_run

PROBE_TIMEOUT_S = 1.0  # a vote that waits longer than this for SQLite's write lock counts as blocked


def _short_busy_timeout(dbapi_connection, _record) -> None:
    dbapi_connection.execute(f"PRAGMA busy_timeout={int(PROBE_TIMEOUT_S * 1000)}")


class VoteProbe:
    """Commits one vote from its own connection (the app's path) and records whether it got through in time."""

    def __init__(self, url: str, settings) -> None:
        self.engine = make_engine(url)
        event.listen(self.engine, "connect", _short_busy_timeout)  # after make_engine's own: it wins
        self.settings = settings
        self.results: list[tuple[str, bool, float]] = []
        with Session(self.engine) as session:
            task_id = session.scalar(select(Candidate.task_id).group_by(Candidate.task_id).limit(1))
            self.task_id = task_id
            self.left, self.right = session.scalars(select(Candidate.id).where(Candidate.task_id == task_id)).all()[:2]

    def __call__(self, phase: str) -> None:
        started = time.monotonic()
        try:
            with transaction(sessionmaker(self.engine)) as session:
                record_vote(
                    session,
                    task_id=self.task_id,
                    left_candidate_id=self.left,
                    right_candidate_id=self.right,
                    choice="left",
                    client_submission_id=f"probe-{uuid.uuid4().hex}",
                    settings=self.settings,
                )
            committed = True
        except OperationalError:  # "database is locked": someone held the write lock past the timeout
            committed = False
        self.results.append((phase, committed, round(time.monotonic() - started, 2)))


def _wrap(monkeypatch, owner: object, name: str, before) -> None:
    """Replace `owner.name` by a function that calls `before()` and then the original."""
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        before()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


@pytest.mark.slow
def test_votes_commit_while_the_run_writes_and_reads_files(sqlite_demo, settings, monkeypatch):  # noqa: F811
    """A run's slow work holds no write transaction: writing the snapshot, saving and hashing the model, and the
    gate's measurement (loading the active version, which hashes its files, scoring it, the pixel rules)."""
    factory = sqlite_demo
    first = run_training_job(factory, run_id=queue(factory, {**FAST, **NO_FLOOR, "max_steps": 1}), settings=settings)
    assert first.status == "active"  # the second run's gate loads and scores it
    probe = VoteProbe(engine_of(factory).url.render_as_string(hide_password=False), settings)
    _wrap(monkeypatch, datasets.Dataset, "save_to_disk", lambda: probe("snapshot save"))
    _wrap(monkeypatch, JointRewardModel, "save", lambda: probe("model save"))
    _wrap(monkeypatch, registry_files, "_sha256", lambda: probe("hashing model files"))
    _wrap(monkeypatch, judge, "load_scorer", lambda: probe("loading the active version"))
    _wrap(monkeypatch, judge, "score_pairs", lambda: probe("scoring the active version"))
    _wrap(monkeypatch, judge, "rule_deltas", lambda: probe("pixel rules"))
    _wrap(monkeypatch, judge, "decide", lambda: probe("the gate's bootstrap"))
    run_id = queue(factory, {**FAST, **NO_FLOOR, "max_steps": 1, "seed": 1})

    version = run_training_job(factory, run_id=run_id, settings=settings)

    assert version.metrics["gate"]["active"]["name"] == first.name  # the gate did score v0001
    phases = {phase for phase, _, _ in probe.results}
    assert phases == {
        "snapshot save", "model save", "hashing model files", "loading the active version",
        "scoring the active version", "pixel rules", "the gate's bootstrap",
    }  # fmt: skip
    blocked = [(phase, seconds) for phase, committed, seconds in probe.results if not committed]
    assert blocked == [], f"votes waited on the run's write lock: {blocked}"
    probe.engine.dispose()


@pytest.mark.slow
def test_a_run_cancelled_while_its_model_is_saved_stays_cancelled(demo, settings, monkeypatch):  # noqa: F811
    factory = demo
    run_id = queue(factory, {**FAST, "max_steps": 1})
    original_save = JointRewardModel.save

    def save_after_a_cancel(model, folder: Path) -> None:
        with transaction(factory) as session:  # the researcher cancels while the checkpoint is being written
            cancel_run(session, run_id=run_id)
        original_save(model, folder)

    monkeypatch.setattr(JointRewardModel, "save", save_after_a_cancel)

    with pytest.raises(RunCancelled, match=f"run {run_id} is cancelled"):
        run_training_job(factory, run_id=run_id, settings=settings)

    with factory() as session:
        run = session.get(TrainingRun, run_id)
        assert (run.status, run.error) == ("cancelled", "cancelled on request while training")
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 0  # nothing published, nothing active
    assert list(settings.registry_dir.iterdir()) == []  # the staged files are removed, no temp folder or lock left


def test_snapshot_discards_unrecorded_and_half_written_folders(sqlite_demo, settings):  # noqa: F811
    factory = sqlite_demo
    run_id = queue(factory, FAST)
    folder = run_folder(settings, run_id)
    (folder / "snapshot").mkdir(parents=True)  # complete or not, the row never pointed at it: not trusted
    (folder / "snapshot" / "junk").write_text("from a crashed attempt")
    (folder / f"{pipeline.SNAPSHOT_STAGING_PREFIX}killed").mkdir()  # a save killed mid-way

    snapshot = pipeline._snapshot(factory, run_id, settings)

    assert snapshot.path == folder / "snapshot" and not (folder / "snapshot" / "junk").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["snapshot"]
    with factory() as session:
        run = session.get(TrainingRun, run_id)
    assert (run.snapshot_path, run.snapshot_fingerprint) == (str(folder / "snapshot"), snapshot.fingerprint)
    assert pipeline._snapshot(factory, run_id, settings).fingerprint == snapshot.fingerprint  # reused as saved
