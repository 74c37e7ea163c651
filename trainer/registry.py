"""The model registry: versions on disk under `settings.registry_dir` and rows in `model_versions`.

A version is a folder `registry_dir/<name>` (`v0001`, `v0002`, …) holding what the model's `save(dir)` wrote
plus `manifest.json` (name, created time, sha256 of every file). Publishing writes into a `.tmp-<uuid>` folder
and renames it into place only when complete, so a crash mid-save is never visible as a version. Exactly one
version is `active` at a time: every switch takes the registry lock and flips both rows in one transaction.
Functions that take a session never commit; the caller owns the transaction. See docs/registry.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from storage.db import session_factory
from storage.errors import InvalidInput, NotFound
from storage.models import Candidate, ModelVersion, Score, TrainingRun, utcnow
from storage.repository import json_object
from storage.settings import Settings

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
TMP_PREFIX = ".tmp-"
ROLLED_BACK = "rolled back"  # the reason a rollback gives the version it retires; such versions are skipped
MAX_REASON_CHARS = 2000
# Any constant works; it only has to be the same in every process that switches the active version.
_PROMOTION_LOCK_KEY = 7_240_517_733
# Float subtraction (0.81 - 0.01) must not turn an exact tie at the threshold into a rejection.
_GATE_EPSILON = 1e-12
_SCORE_CHUNK = 500
_GE, _MINUS = "\N{GREATER-THAN OR EQUAL TO}", "\N{MINUS SIGN}"  # reasons read like the maths


class VersionFilesError(InvalidInput):
    """A version folder that is missing, has no manifest, or whose files do not match it."""


class RegistryConflict(RuntimeError):
    """The active version changed under a switch; the transaction must roll back (a bug, or a missing lock)."""


@dataclass(frozen=True)
class GateDecision:
    """The promotion gate's verdict on one candidate version."""

    promoted: bool
    reason: str


# --- queries ---------------------------------------------------------------------------------------------


def get_version(session: Session, *, version_id: int) -> ModelVersion:
    """The version with this id, or `NotFound`."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotFound(f"No model version with id {version_id}.")
    return version


def active_version(session: Session) -> ModelVersion | None:
    """The version the app serves, or None before the first promotion."""
    return session.scalars(select(ModelVersion).where(ModelVersion.status == "active")).one_or_none()


def list_versions(session: Session, *, status: str | None = None) -> list[ModelVersion]:
    """Published versions, newest first, optionally only those with `status`."""
    query = select(ModelVersion).order_by(ModelVersion.id.desc())
    if status is not None:
        query = query.where(ModelVersion.status == status)
    return list(session.scalars(query))


def version_dir(settings: Settings, version: ModelVersion) -> Path:
    """The folder holding `version`'s files (its `path` is relative to `settings.registry_dir`)."""
    relative = Path(version.path)
    if relative.is_absolute() or len(relative.parts) != 1 or relative.name in ("", ".", ".."):
        raise VersionFilesError(f"Version {version.name} has path {version.path!r}; expected a plain folder name.")
    return settings.registry_dir / relative


# --- files: manifest, hashing, fsync ---------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _payload_files(folder: Path) -> list[Path]:
    """Every file under `folder` except the manifest, in a stable order; links are refused."""
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise InvalidInput(f"save() wrote a symbolic link {path.name!r}; versions must hold real files.")
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST:
            files.append(path)
    return files


def _hash_payload(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's `files` entry for what `save()` wrote: relative path → sha256 and size."""
    if (folder / MANIFEST).exists():
        raise InvalidInput(f"save() wrote {MANIFEST}, a name the registry reserves for itself.")
    files = {
        p.relative_to(folder).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in _payload_files(folder)
    }
    if not files:
        raise InvalidInput("save() wrote no files; nothing to publish.")
    return files


def _write_manifest(folder: Path, *, name: str, created_at: datetime, files: dict[str, Any]) -> None:
    manifest = {"format": MANIFEST_FORMAT, "name": name, "created_at": created_at.isoformat(), "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` (folders last, so their entries point at flushed data)."""
    for path in sorted(folder.rglob("*"), key=lambda p: p.is_dir()):
        _fsync_path(path)
    _fsync_path(folder)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise VersionFilesError(f"Version folder {path} is missing.")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VersionFilesError(f"{path} has no {MANIFEST}; it is not a complete registry version.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VersionFilesError(f"{path / MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise VersionFilesError(f"{path / MANIFEST} lists no files.")
    return manifest


def verify_version_files(path: Path) -> None:
    """Check every file the manifest lists exists with its recorded sha256; raise `VersionFilesError` if not."""
    manifest = _read_manifest(path)
    for relative, entry in manifest["files"].items():
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise VersionFilesError(f"{path / MANIFEST} lists {relative!r}, outside the version folder.")
        file = path / relative
        if not file.is_file():
            raise VersionFilesError(f"{file} is listed in the manifest but missing.")
        if not isinstance(entry, dict) or _sha256(file) != entry.get("sha256"):
            raise VersionFilesError(f"{file} does not match its sha256 in {MANIFEST}; the version is corrupt.")


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
    _write_manifest(tmp, name=name, created_at=created_at, files=files)
    _fsync_path(tmp / MANIFEST)
    _fsync_path(tmp)
    final = tmp.parent / name
    _move_orphan_aside(final)
    os.replace(tmp, final)
    _fsync_path(tmp.parent)


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
        files = _hash_payload(tmp)
        _fsync_tree(tmp)
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


# --- switching the active version ------------------------------------------------------------------------


def _lock_registry(session: Session) -> None:
    """Serialise switches of the active version until the transaction ends.

    PostgreSQL: a transaction-level advisory lock (a row lock cannot guard "no active row yet").
    SQLite: nothing to do, `storage.db` begins every transaction with BEGIN IMMEDIATE (one writer at a time).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PROMOTION_LOCK_KEY})


def _current_active(session: Session) -> ModelVersion | None:
    """The active version as committed now (after the lock), not as cached in the session."""
    query = select(ModelVersion).where(ModelVersion.status == "active").execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def _fresh_version(session: Session, version_id: int) -> ModelVersion:
    version = session.get(ModelVersion, version_id, populate_existing=True)
    if version is None:
        raise NotFound(f"No model version with id {version_id}.")
    return version


def _set_status(session: Session, version: ModelVersion, *, expected: str, **values: Any) -> None:
    """A guarded UPDATE: change `version` only if it still has status `expected`."""
    result = session.execute(
        update(ModelVersion).where(ModelVersion.id == version.id, ModelVersion.status == expected).values(**values)
    )
    if result.rowcount != 1:
        raise RegistryConflict(f"{version.name} is no longer {expected!r}; another process changed it.")


def _switch_active(
    session: Session,
    *,
    new: ModelVersion,
    previous: ModelVersion | None,
    reason: str,
    previous_reason: str,
    promoted_at: datetime | None,
) -> None:
    """Retire `previous` and activate `new` in the caller's transaction; re-check that one version is active."""
    if previous is not None:
        _set_status(session, previous, expected="active", status="retired", reason=previous_reason)
    values: dict[str, Any] = {"status": "active", "reason": reason}
    if promoted_at is not None:
        values["promoted_at"] = promoted_at
    _set_status(session, new, expected=new.status, **values)
    count = session.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.status == "active"))
    if count != 1:
        raise RegistryConflict(f"{count} active versions after activating {new.name}; rolled back.")
    session.refresh(new)
    if previous is not None:
        session.refresh(previous)


def _require_files(settings: Settings, version: ModelVersion) -> None:
    verify_version_files(version_dir(settings, version))


# --- the promotion gate ----------------------------------------------------------------------------------


def _metric_value(version: ModelVersion, metric: str) -> float | None:
    value = (version.metrics or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _gate_verdict(new: ModelVersion, active: ModelVersion | None, *, metric: str, tolerance: float) -> GateDecision:
    """Compare held-out metrics; pure (no DB, no files)."""
    value = _metric_value(new, metric)
    if value is None:
        return GateDecision(False, f"{metric} is missing from {new.name}'s metrics (or not a finite number).")
    if active is None:
        return GateDecision(True, f"{metric} {value:.4g}; no active version to compare with.")
    baseline = _metric_value(active, metric)
    if baseline is None:
        return GateDecision(True, f"{metric} {value:.4g}; active {active.name} has no {metric} to compare with.")
    if value + _GATE_EPSILON >= baseline - tolerance:
        return GateDecision(
            True, f"{metric} {value:.4g} {_GE} active {active.name}'s {baseline:.4g} {_MINUS} {tolerance:.4g}"
        )
    return GateDecision(False, f"{metric} {value:.4g} < active {active.name}'s {baseline:.4g} {_MINUS} {tolerance:.4g}")


def apply_promotion_gate(
    session: Session,
    *,
    version_id: int,
    tolerance: float,
    settings: Settings,
    metric: str = "heldout_accuracy",
    verify: bool = True,
) -> GateDecision:
    """Activate a candidate if its `metric` >= the active one's minus `tolerance`; otherwise mark it rejected.

    Before promoting, the files are hash-checked (a read of the whole checkpoint, in the caller's transaction);
    `verify=False` skips that for a version `add_version` placed in this same transaction from files just hashed.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance < math.inf:
        raise InvalidInput(f"tolerance must be a finite number >= 0, got {tolerance!r}.")
    _lock_registry(session)
    new = _fresh_version(session, version_id)
    if new.status != "candidate":
        raise InvalidInput(f"{new.name} is {new.status}; only candidates go through the gate (use promote_version).")
    active = _current_active(session)
    decision = _gate_verdict(new, active, metric=metric, tolerance=tolerance)
    if decision.promoted and verify:
        try:
            _require_files(settings, new)
        except VersionFilesError as exc:
            decision = GateDecision(False, f"files failed verification: {exc}")
    if not decision.promoted:
        _set_status(session, new, expected="candidate", status="rejected", reason=decision.reason)
        session.refresh(new)
        return decision
    _switch_active(
        session,
        new=new,
        previous=active,
        reason=decision.reason,
        previous_reason=f"replaced by {new.name}",
        promoted_at=utcnow(),
    )
    return decision


# --- manual promotion and rollback -----------------------------------------------------------------------


def promote_version(session: Session, *, version_id: int, reason: str, settings: Settings) -> ModelVersion:
    """Activate any non-active version without the gate (a researcher's decision), after checking its files."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("A manual promotion needs a reason (who decided and why).")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidInput(f"The reason is {len(reason)} characters; keep it under {MAX_REASON_CHARS}.")
    _lock_registry(session)
    new = _fresh_version(session, version_id)
    if new.status == "active":
        raise InvalidInput(f"{new.name} is already the active version.")
    _require_files(settings, new)
    _switch_active(
        session,
        new=new,
        previous=_current_active(session),
        reason=reason.strip(),
        previous_reason=f"replaced by {new.name}",
        promoted_at=utcnow(),
    )
    return new


def _rollback_target(session: Session, current: ModelVersion) -> ModelVersion | None:
    """The version that was active just before `current`: retired by a promotion (not by a rollback), latest."""
    query = (
        select(ModelVersion)
        .where(
            ModelVersion.status == "retired",
            ModelVersion.promoted_at.is_not(None),
            ModelVersion.reason.is_distinct_from(ROLLED_BACK),
        )
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
    )
    if current.promoted_at is not None:
        query = query.where(ModelVersion.promoted_at <= current.promoted_at, ModelVersion.id != current.id)
    return session.scalars(query.limit(1)).first()


def rollback(session: Session, *, settings: Settings) -> ModelVersion:
    """Retire the active version ("rolled back") and re-activate the one that was active before it."""
    _lock_registry(session)
    current = _current_active(session)
    if current is None:
        raise InvalidInput("Nothing to roll back: no version is active.")
    target = _rollback_target(session, current)
    if target is None:
        raise InvalidInput(f"Nothing to roll back to: no version was active before {current.name}.")
    _require_files(settings, target)
    # promoted_at stays: a restored version keeps its place in the history, so a second rollback goes further back.
    _switch_active(
        session,
        new=target,
        previous=current,
        reason=f"restored by rollback from {current.name}",
        previous_reason=ROLLED_BACK,
        promoted_at=None,
    )
    return target


# --- loading the scorer ----------------------------------------------------------------------------------


def _default_loader(path: Path, *, device: str) -> Any:
    from trainer.model import JointRewardModel  # lazy: the registry must not pull in torch models on import

    return JointRewardModel.load(path, device=device, lm_head=False)  # a scorer never needs the LM head


def _active_for_loading(session: Session) -> ModelVersion | None:
    """The active version, read without leaving a transaction open in `session` when it had none.

    A session already in a transaction (perhaps with uncommitted work the caller wants seen) is read as it is; that
    transaction is the caller's to end. Otherwise the row comes from a short read-only session of its own and is
    merged into `session` without SQL, so no connection (on SQLite: no write lock) is held while the model loads.
    """
    if session.in_transaction() or session.new or session.dirty or session.deleted:
        return active_version(session)
    bind = session.get_bind()
    reader = session_factory(bind, read_only=True) if isinstance(bind, Engine) else sessionmaker(bind)
    with reader() as own:
        version = active_version(own)
    return None if version is None else session.merge(version, load=False)


def load_scorer(
    session: Session,
    *,
    settings: Settings,
    device: str = "cpu",
    loader: Callable[..., Any] | None = None,
    verify: bool = True,
) -> tuple[ModelVersion, Any] | None:
    """(active version, loaded model), or None when no version is active; files are hash-checked first.

    Pass a session with no transaction open and none is held during the (slow) hash check and load.
    """
    version = _active_for_loading(session)
    if version is None:
        return None
    path = version_dir(settings, version)
    if verify:
        verify_version_files(path)
    return version, (loader or _default_loader)(path, device=device)


# --- scores cache ----------------------------------------------------------------------------------------


def _chunks(items: list[Any], size: int = _SCORE_CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _validate_scores(session: Session, scores: dict[int, float]) -> list[dict[str, Any]]:
    rows = []
    for candidate_id, score in scores.items():
        if isinstance(candidate_id, bool) or not isinstance(candidate_id, int):
            raise InvalidInput(f"Candidate ids must be integers, got {candidate_id!r}.")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise InvalidInput(f"Score for candidate {candidate_id} must be a finite number, got {score!r}.")
        rows.append({"candidate_id": int(candidate_id), "score": float(score)})
    ids = [row["candidate_id"] for row in rows]
    known: set[int] = set()
    for chunk in _chunks(ids):
        known.update(session.scalars(select(Candidate.id).where(Candidate.id.in_(chunk))))
    missing = sorted(set(ids) - known)
    if missing:
        raise NotFound(f"No candidates with ids {missing[:10]}{' …' if len(missing) > 10 else ''}.")
    return rows


def record_scores(session: Session, *, version_id: int, scores: dict[int, float]) -> None:
    """Insert or overwrite the scores of `version_id` for the given candidates."""
    get_version(session, version_id=version_id)
    rows = _validate_scores(session, scores)
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    now = utcnow()
    for chunk in _chunks(rows):
        statement = dialect.insert(Score).values(
            [{**row, "version_id": version_id, "created_at": now} for row in chunk]
        )
        statement = statement.on_conflict_do_update(
            index_elements=[Score.version_id, Score.candidate_id],
            set_={"score": statement.excluded.score, "created_at": statement.excluded.created_at},
        )
        session.execute(statement)


def cached_scores(session: Session, *, version_id: int, candidate_ids: list[int]) -> dict[int, float]:
    """The stored scores of `version_id` for those of `candidate_ids` that have one."""
    found: dict[int, float] = {}
    for chunk in _chunks(list(dict.fromkeys(candidate_ids))):
        query = select(Score.candidate_id, Score.score).where(
            Score.version_id == version_id, Score.candidate_id.in_(chunk)
        )
        found.update({candidate_id: score for candidate_id, score in session.execute(query)})
    return found
