"""Retention of the trainer's files: model versions' folders beyond the newest K, and old run snapshots; and the
whole garbage collection (`python -m trainer gc`, the worker's daily `gc` job) with the store's part (`storage.gc`).

Rules (docs/operations.md, "Retention"):

- **model version**: the files of every version except the newest `JRM_KEEP_VERSIONS` (by id; 0 keeps all) and
  the protected ones — the active version, the previous one (the version `rollback` returns to,
  `trainer.registry.switch`) and every pinned one (`config["pinned"] is True`, set by `python -m trainer pin`).
  The row stays, with its status, metrics and scores, so the history is complete; `config["files_removed"]`
  records when its folder went (such a version can no longer be promoted: its files fail verification).
- **run snapshot**: `runs/<id>/snapshot` (and staging leftovers) of a run that finished (succeeded, failed or
  cancelled) more than `JRM_SNAPSHOT_RETENTION_DAYS` ago (0 keeps all), unless the run made a protected version.
  The run's log and its row (fingerprint, watermark) stay; a finished run is never trained again.

Versions are decided and moved aside under the registry lock, in the transaction that marks their rows, so a
promotion or rollback running at the same time cannot make one of them active meanwhile; the moved folders
(`.removed-*`) are deleted after the commit, and any left by an interrupted collection go with the next one.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import engine_of, session_factory, transaction
from storage.errors import InvalidInput
from storage.gc import BLOB_LOCK_WAIT_S, GcReport, Removal, collect_store, remove_tree, tree_bytes
from storage.models import ModelVersion, TrainingRun, utcnow
from storage.settings import Settings
from trainer.registry.files import version_dir
from trainer.registry.reading import active_version, get_version_by_name, list_versions

# The registry lock and the rollback target are switch's own; sharing them keeps "previous" the version rollback
# really returns to, and the collection serialised with every switch.
from trainer.registry.switch import _lock_registry, _rollback_target

PINNED, FILES_REMOVED = "pinned", "files_removed"  # keys in ModelVersion.config
REMOVED_PREFIX = ".removed-"  # a version folder moved aside, deleted after the commit
FINISHED = ("succeeded", "failed", "cancelled")
# trainer.pipeline's names (importing the pipeline loads torch, which the worker process never needs).
SNAPSHOT_NAME, SNAPSHOT_STAGING_PREFIX = "snapshot", ".snapshot-tmp-"


def is_pinned(version: ModelVersion) -> bool:
    return (version.config or {}).get(PINNED) is True


def files_removed(version: ModelVersion) -> bool:
    return bool((version.config or {}).get(FILES_REMOVED))


def protected_versions(session: Session) -> dict[int, str]:
    """Version id → why its files stay whatever its age: active, previous (rollback's target) or pinned."""
    protected: dict[int, str] = {}
    active = active_version(session)
    if active is not None:
        protected[active.id] = "active"
        previous = _rollback_target(session, active)
        if previous is not None:
            protected[previous.id] = "previous"
    for version in list_versions(session):
        if is_pinned(version):
            protected.setdefault(version.id, "pinned")
    return protected


def pin_version(session: Session, *, name: str, pinned: bool = True) -> ModelVersion:
    """Pin (or unpin) version `name`: a pinned version's files are never collected. The caller commits."""
    _lock_registry(session)  # a collection deciding what to remove waits for this
    version = get_version_by_name(session, name=name)
    if pinned and files_removed(version):
        raise InvalidInput(f"{version.name}'s files were removed on {version.config[FILES_REMOVED]}; nothing to pin.")
    config = {key: value for key, value in (version.config or {}).items() if key != PINNED}
    version.config = {**config, PINNED: True} if pinned else config  # a new dict: JSON columns track assignment
    session.flush()
    return version


# --- model versions -----------------------------------------------------------------------------------------


def plan_versions(session: Session, settings: Settings) -> list[ModelVersion]:
    """Versions whose files the rule removes now, oldest first (reads only)."""
    if settings.keep_versions == 0:
        return []
    protected = protected_versions(session)
    newest = list_versions(session)
    return [v for v in reversed(newest[settings.keep_versions :]) if v.id not in protected and not files_removed(v)]


def _version_removal(settings: Settings, version: ModelVersion) -> Removal:
    folder = version_dir(settings, version)
    note = f"{version.status}, beyond the newest {settings.keep_versions}"
    return Removal("model version", folder, tree_bytes(folder), note if folder.exists() else note + "; already gone")


def _leftovers(settings: Settings) -> list[Removal]:
    """Folders an interrupted collection moved aside and did not delete."""
    if not settings.registry_dir.is_dir():
        return []
    found = sorted(settings.registry_dir.glob(f"{REMOVED_PREFIX}*"))
    return [Removal("model version", path, tree_bytes(path), "left by an interrupted collection") for path in found]


def remove_versions(factory: sessionmaker[Session], settings: Settings, *, now: datetime) -> list[Removal]:
    """Apply the version rule: folders moved aside and rows marked in one transaction, deleted after it."""
    removals, moved = _leftovers(settings), []
    try:
        with transaction(factory) as session:
            _lock_registry(session)
            for version in plan_versions(session, settings):
                removal = _version_removal(settings, version)
                if removal.path.exists():
                    aside = removal.path.with_name(f"{REMOVED_PREFIX}{removal.path.name}-{uuid.uuid4().hex[:8]}")
                    os.replace(removal.path, aside)
                    moved.append((aside, removal.path))
                version.config = {**(version.config or {}), FILES_REMOVED: now.isoformat()}
                removals.append(removal)
            session.flush()
    except BaseException:
        for aside, folder in reversed(moved):  # the rows were not marked: the folders go back
            os.replace(aside, folder)
        raise
    for removal in removals:
        if removal.path.name.startswith(REMOVED_PREFIX):
            remove_tree(removal.path)
    for aside, _ in moved:
        remove_tree(aside)
    return removals


# --- run snapshots ------------------------------------------------------------------------------------------


def snapshot_paths(settings: Settings, run_id: int) -> list[Path]:
    """The run's snapshot folder and any staging folders beside it (`trainer.pipeline._snapshot`)."""
    folder = settings.runs_dir / str(run_id)  # trainer.pipeline.run_folder
    return [folder / SNAPSHOT_NAME, *sorted(folder.glob(f"{SNAPSHOT_STAGING_PREFIX}*"))]


def plan_snapshots(session: Session, settings: Settings, *, now: datetime) -> list[Removal]:
    """Snapshots of runs finished more than `JRM_SNAPSHOT_RETENTION_DAYS` ago, except protected versions' runs."""
    if settings.snapshot_retention_days == 0:
        return []
    cutoff = now - timedelta(days=settings.snapshot_retention_days)
    protected = protected_versions(session)
    keep = set(session.scalars(select(ModelVersion.run_id).where(ModelVersion.id.in_(list(protected)))))
    finished_at = func.coalesce(TrainingRun.finished_at, TrainingRun.created_at)
    query = select(TrainingRun.id).where(TrainingRun.status.in_(FINISHED), finished_at < cutoff)
    return [
        Removal("run snapshot", path, tree_bytes(path), f"run {run_id}, finished before {cutoff:%Y-%m-%d}")
        for run_id in session.scalars(query.order_by(TrainingRun.id))
        if run_id not in keep
        for path in snapshot_paths(settings, run_id)
        if path.exists()
    ]


# --- the whole collection -----------------------------------------------------------------------------------


def collect_garbage(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    lock_wait_s: float = BLOB_LOCK_WAIT_S,
) -> GcReport:
    """Every retention rule, the store's and the trainer's; a dry run removes nothing and reports the same."""
    now = now or utcnow()
    report = collect_store(factory, settings, dry_run=dry_run, now=now, lock_wait_s=lock_wait_s)
    with session_factory(engine_of(factory), read_only=True)() as session:
        snapshots = plan_snapshots(session, settings, now=now)
        if dry_run:  # what remove_versions decides under the lock, read without it
            versions = _leftovers(settings) + [_version_removal(settings, v) for v in plan_versions(session, settings)]
    if dry_run:
        report.removals += snapshots + versions
        return report
    for removal in snapshots:  # a finished run's snapshot: nothing reads or writes it any more
        remove_tree(removal.path)
    report.removals += snapshots
    report.removals += remove_versions(factory, settings, now=now)
    return report
