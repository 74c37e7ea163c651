"""Retention of versions and run snapshots (`trainer.retention`), the `gc` and `pin` commands, the daily job.

Versions are published from a stand-in `save` (one small file): the rules never read the weights.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select

from storage.db import transaction
from storage.errors import InvalidInput
from storage.models import ModelVersion, TrainingRun, utcnow
from trainer import worker
from trainer.__main__ import main
from trainer.pipeline import SNAPSHOT_STAGING_PREFIX, run_folder
from trainer.registry import promote_version, publish_version, rollback, verify_version_files, version_dir
from trainer.retention import (
    FILES_REMOVED,
    PINNED,
    REMOVED_PREFIX,
    collect_garbage,
    pin_version,
    protected_versions,
    snapshot_paths,
)
from trainer.worker.scheduler import GC_JOB, collect_garbage_job


def publish(factory, settings, *, run_id: int | None = None) -> str:
    """A committed candidate version; returns its name."""
    with transaction(factory) as session:
        version = publish_version(
            session,
            save=lambda folder: (folder / "weights.bin").write_bytes(b"w" * 1000),
            settings=settings,
            backbone="tiny",
            config={},
            metrics=None,
            run_id=run_id,
        )
        return version.name


def promote(factory, settings, name: str) -> None:
    with transaction(factory) as session:
        version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).one()
        promote_version(session, version_id=version.id, reason="test", settings=settings)


def pin(factory, name: str, pinned: bool = True) -> None:
    with transaction(factory) as session:
        pin_version(session, name=name, pinned=pinned)


def versions(factory) -> dict[str, ModelVersion]:
    with factory() as session:
        return {v.name: v for v in session.scalars(select(ModelVersion))}


@pytest.fixture
def registry(factory, settings):
    """Six versions: v1, v2, v4 promoted in turn (v4 active, v2 previous), v3 pinned, v5 and v6 candidates."""
    names = [publish(factory, settings) for _ in range(6)]
    for index in (0, 1, 3):
        promote(factory, settings, names[index])
    pin(factory, names[2])
    return names


def test_versions_beyond_the_newest_k_go_active_previous_and_pinned_stay(factory, settings, registry):
    v1, v2, v3, v4, v5, v6 = registry
    keep_one = replace(settings, keep_versions=1, snapshot_retention_days=0)
    ids = {name: v.id for name, v in versions(factory).items()}
    with factory() as session:
        assert protected_versions(session) == {ids[v4]: "active", ids[v2]: "previous", ids[v3]: "pinned"}
    report = collect_garbage(factory, keep_one)
    assert [(r.kind, r.path.name) for r in report.removals] == [("model version", v1), ("model version", v5)]
    assert all(r.bytes > 1000 for r in report.removals)  # the weights and the manifest
    rows = versions(factory)
    assert {name for name, v in rows.items() if FILES_REMOVED in v.config} == {v1, v5}
    assert (rows[v1].status, rows[v5].status) == ("retired", "candidate")  # the rows and their history stay
    for name in (v2, v3, v4, v6):
        verify_version_files(version_dir(settings, rows[name]))
    assert not version_dir(settings, rows[v1]).exists() and not list(settings.registry_dir.glob(f"{REMOVED_PREFIX}*"))
    assert collect_garbage(factory, keep_one).removals == []  # marked: not counted again
    with transaction(factory) as session:
        assert rollback(session, settings=settings).name == v2  # the previous version still has its files


def test_version_dry_run_removes_nothing_and_reports_the_same(factory, settings, registry):
    keep_two = replace(settings, keep_versions=2)
    dry = collect_garbage(factory, keep_two, dry_run=True)
    assert [r.path.name for r in dry.removals] == [registry[0]]  # v1; v5 is among the newest two
    assert version_dir(settings, versions(factory)[registry[0]]).exists()
    assert all(FILES_REMOVED not in v.config for v in versions(factory).values())
    assert collect_garbage(factory, keep_two).removals == dry.removals


def test_zero_keeps_every_version_and_an_unpinned_version_can_go(factory, settings, registry):
    assert collect_garbage(factory, replace(settings, keep_versions=0)).removals == []
    pin(factory, registry[2], pinned=False)
    assert PINNED not in versions(factory)[registry[2]].config
    report = collect_garbage(factory, replace(settings, keep_versions=1))
    assert registry[2] in {r.path.name for r in report.removals}
    with transaction(factory) as session, pytest.raises(InvalidInput, match="files were removed"):
        pin_version(session, name=registry[2])


def test_an_interrupted_collection_leaves_nothing_behind(factory, settings, registry):
    leftover = settings.registry_dir / f"{REMOVED_PREFIX}v0099-abcd"
    leftover.mkdir()
    (leftover / "weights.bin").write_bytes(b"x" * 10)
    report = collect_garbage(factory, replace(settings, keep_versions=0))
    assert [(r.path, r.note) for r in report.removals] == [(leftover, "left by an interrupted collection")]
    assert not leftover.exists()


def finished_run(factory, *, status: str, days_ago: float) -> int:
    with transaction(factory) as session:
        when = utcnow() - timedelta(days=days_ago)
        run = TrainingRun(
            status=status,
            trigger="manual",
            params={},
            created_at=when,
            finished_at=None if status == "running" else when,
        )
        session.add(run)
        session.flush()
        return run.id


def make_snapshot(settings, run_id: int) -> None:
    folder = run_folder(settings, run_id)
    (folder / "snapshot").mkdir(parents=True)
    (folder / "snapshot" / "data.arrow").write_bytes(b"s" * 500)
    (folder / "train.log").write_text("log")


def test_old_snapshots_go_except_protected_versions_runs_and_unfinished_runs(factory, settings):
    days = settings.snapshot_retention_days
    old_active = finished_run(factory, status="succeeded", days_ago=days + 5)
    old_pinned = finished_run(factory, status="succeeded", days_ago=days + 4)
    old_plain = finished_run(factory, status="failed", days_ago=days + 3)
    old_running = finished_run(factory, status="running", days_ago=days + 2)
    recent = finished_run(factory, status="cancelled", days_ago=days / 2)
    runs = (old_active, old_pinned, old_plain, old_running, recent)
    for run_id in runs:
        make_snapshot(settings, run_id)
    staging = run_folder(settings, old_plain) / f"{SNAPSHOT_STAGING_PREFIX}dead"
    staging.mkdir()
    promote(factory, settings, publish(factory, settings, run_id=old_active))
    pin(factory, publish(factory, settings, run_id=old_pinned))
    everything = replace(settings, keep_versions=0)
    dry = collect_garbage(factory, everything, dry_run=True)
    assert [r.path for r in dry.removals] == [run_folder(settings, old_plain) / "snapshot", staging]
    assert staging.exists()
    report = collect_garbage(factory, everything)
    assert report.removals == dry.removals and report.bytes_freed == 500
    assert {run_id for run_id in runs if (run_folder(settings, run_id) / "snapshot").exists()} == set(runs) - {
        old_plain
    }
    assert (run_folder(settings, old_plain) / "train.log").exists()  # the log stays
    assert collect_garbage(factory, replace(everything, snapshot_retention_days=0), dry_run=True).removals == []


def test_snapshot_paths_are_the_pipelines(settings):
    assert snapshot_paths(settings, 3)[0] == run_folder(settings, 3) / "snapshot"


def test_cli_gc_pin_and_unpin(factory, settings, db_url, registry, monkeypatch, capsys):
    monkeypatch.setenv("JRM_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("JRM_KEEP_VERSIONS", "1")
    assert main(["unpin", registry[2], "--database", db_url]) == 0
    assert main(["gc", "--dry-run", "--database", db_url]) == 0
    out = capsys.readouterr().out
    assert "would remove (dry run: nothing was removed)" in out and "model version  3" in out
    assert main(["pin", registry[2], "--database", db_url]) == 0
    assert main(["gc", "--list", "--database", db_url]) == 0
    out = capsys.readouterr().out
    assert f"{registry[2]} is pinned" in out and "garbage collection removed:" in out
    assert str(settings.registry_dir / registry[0]) in out and str(settings.registry_dir / registry[2]) not in out
    assert main(["pin", "v9999", "--database", db_url]) == 2


def test_the_scheduler_runs_the_collection_daily_at_the_configured_hour(settings, db_url, caplog):
    for hour, expected in ((4, "cron[hour='4', minute='0']"), (-1, None)):
        the_worker = worker.Worker(replace(settings, database_url=db_url, gc_hour=hour))
        handle = worker.WorkerHandle(the_worker, worker.build_scheduler(the_worker, BackgroundScheduler))
        try:
            job = handle.scheduler.get_job(GC_JOB, "local")
            assert (job and str(job.trigger)) == expected
            if job is not None:
                with caplog.at_level(logging.INFO, logger="trainer.worker"):
                    collect_garbage_job(the_worker)
                assert "garbage collection removed:" in caplog.text
        finally:
            handle.stop()
