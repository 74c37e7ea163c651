"""Publishing a version atomically: stage (save, hash, flush) in a flock-held temp folder, then add the row and
rename the folder into place; and the sweep that removes temp folders left by crashed publishes."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from storage.errors import InvalidInput, NotFound
from storage.models import ModelVersion, TrainingRun, utcnow
from storage.settings import Settings
from storage.validation import json_object
from trainer.registry.files import MANIFEST, fsync_path, fsync_tree, hash_payload, write_manifest

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


# --- temp folders: liveness locks and the sweep ----------------------------------------------------------


def _lock_path(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + ".lock")


def _hold_new_lock(lock: Path) -> int:
    """Create and flock `lock`; retry if a sweeper unlinked it between our open and our flock."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _release_lock(lock: Path, fd: int) -> None:
    lock.unlink(missing_ok=True)
    os.close(fd)


@contextmanager
def _tmp_folder(registry: Path) -> Iterator[Path]:
    """A fresh `.tmp-<uuid>` folder, flock-held so a concurrent sweep leaves it alone; removed on error."""
    tmp = registry / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    fd = _hold_new_lock(_lock_path(tmp))
    try:
        tmp.mkdir()
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op after the folder was renamed into place
        _release_lock(_lock_path(tmp), fd)


def _remove_if_abandoned(tmp: Path) -> bool:
    """Delete `tmp` (and its lock) unless a live process holds the lock; True when a folder was removed."""
    lock = _lock_path(tmp)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    existed = tmp.is_dir()
    if existed:
        shutil.rmtree(tmp, ignore_errors=True)
    _release_lock(lock, fd)
    return existed


def sweep_incomplete(settings: Settings) -> list[Path]:
    """Remove `.tmp-*` folders left by publishes that crashed or were killed; returns what was removed."""
    registry = settings.registry_dir
    if not registry.is_dir():
        return []
    removed = []
    for entry in sorted(registry.glob(f"{TMP_PREFIX}*")):
        target = entry.with_name(entry.name.removesuffix(".lock"))
        if entry.name.endswith(".lock") and target.exists():
            continue  # handled with its folder
        if _remove_if_abandoned(target):
            removed.append(target)
    return removed


# --- publish ---------------------------------------------------------------------------------------------


def _validate_publish(*, backbone: str, config: Any, metrics: Any) -> None:
    if not isinstance(backbone, str) or not backbone.strip():
        raise InvalidInput("backbone must name the backbone (a hub id or local path), not be empty.")
    json_object(config, field="config", optional=False)
    if metrics is not None:
        json_object(metrics, field="metrics", optional=False)


def _move_orphan_aside(final: Path) -> None:
    """A folder already at a fresh version's name belongs to no committed row (a rolled-back publish)."""
    if final.exists():
        aside = final.with_name(f"{TMP_PREFIX}orphan-{final.name}-{uuid.uuid4().hex[:8]}")
        log.warning("Registry folder %s has no row (a rolled-back publish); moving it to %s", final, aside)
        os.replace(final, aside)


def _place(tmp: Path, *, name: str, created_at: datetime, files: dict[str, Any]) -> None:
    """Write and flush the manifest, then rename `tmp` (payload already flushed) to its version name atomically."""
    write_manifest(tmp, name=name, created_at=created_at, files=files)
    fsync_path(tmp / MANIFEST)
    fsync_path(tmp)
    final = tmp.parent / name
    _move_orphan_aside(final)
    os.replace(tmp, final)
    fsync_path(tmp.parent)


@dataclass(frozen=True)
class StagedVersion:
    """A model saved, hashed and flushed in a flock-held temp folder: a version once `add_version` records it."""

    folder: Path
    files: dict[str, dict[str, Any]]
    backbone: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None


@contextmanager
def stage_version(
    *,
    save: Callable[[Path], object],
    settings: Settings,
    backbone: str,
    config: dict[str, Any],
    metrics: dict[str, Any] | None,
) -> Iterator[StagedVersion]:
    """Save, hash and flush a model in a `.tmp-<uuid>` folder; use no transaction meanwhile.

    Inside the block, `add_version` turns it into a version; leaving the block without doing so removes the files.
    """
    _validate_publish(backbone=backbone, config=config, metrics=metrics)
    settings.registry_dir.mkdir(parents=True, exist_ok=True)
    with _tmp_folder(settings.registry_dir) as tmp:
        save(tmp)
        files = hash_payload(tmp)
        fsync_tree(tmp)
        yield StagedVersion(tmp, files, backbone, config, metrics)


def add_version(session: Session, staged: StagedVersion, *, run_id: int | None = None) -> ModelVersion:
    """Record `staged` as a new `candidate` row and rename its folder into place (not committed): only quick work."""
    if run_id is not None and session.get(TrainingRun, run_id) is None:
        raise NotFound(f"No training run with id {run_id}.")
    created_at = utcnow()
    with session.begin_nested():  # a failure below leaves no row, and the caller's session usable
        version = ModelVersion(
            name=f"pending-{uuid.uuid4().hex}",
            path="",
            backbone=staged.backbone,
            config=staged.config,
            metrics=staged.metrics,
            run_id=run_id,
            status="candidate",
            created_at=created_at,
        )
        session.add(version)
        session.flush()  # the id names the version: unique across concurrent workers
        version.name = version.path = f"v{version.id:04d}"
        session.flush()
        _place(staged.folder, name=version.name, created_at=created_at, files=staged.files)  # last: nothing after fails
    return version


def publish_version(
    session: Session,
    *,
    save: Callable[[Path], object],
    settings: Settings,
    backbone: str,
    config: dict[str, Any],
    metrics: dict[str, Any] | None,
    run_id: int | None = None,
) -> ModelVersion:
    """Save a model as a new `candidate` version: files renamed into place complete, row added (not committed)."""
    # Staging comes before any DB write: on SQLite the insert holds the one write lock until the caller commits,
    # and a multi-GB checkpoint must not block every vote meanwhile.
    with stage_version(save=save, settings=settings, backbone=backbone, config=config, metrics=metrics) as staged:
        return add_version(session, staged, run_id=run_id)
