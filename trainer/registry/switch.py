"""Switching the active version: applying the promotion gate's decision, manual promotion, rollback.

Every switch runs in the caller's one transaction: the registry lock, a fresh read of the active row, guarded
UPDATEs, and a count that must come out at exactly one active version (docs/registry.md, "Exactly one active").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from storage.errors import InvalidInput, NotFound
from storage.models import ModelVersion, utcnow
from storage.settings import Settings
from trainer.gate import GateDecision
from trainer.registry.files import VersionFilesError, require_files, require_present

ROLLED_BACK = "rolled back"  # the reason a rollback gives the version it retires; such versions are skipped
MAX_REASON_CHARS = 2000
# Any constant works; it only has to be the same in every process that switches the active version.
_PROMOTION_LOCK_KEY = 7_240_517_733


class RegistryConflict(RuntimeError):
    """The active version changed under a switch; the transaction must roll back (a bug, or a missing lock)."""


class ActiveChanged(RuntimeError):
    """The active version is no longer the one a gate decision was measured against: measure again."""


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
    **values: Any,
) -> None:
    """Retire `previous` and activate `new` in the caller's transaction; re-check that one version is active."""
    if previous is not None:
        _set_status(session, previous, expected="active", status="retired", reason=previous_reason)
    values = {**values, "status": "active", "reason": reason}
    if promoted_at is not None:
        values["promoted_at"] = promoted_at
    _set_status(session, new, expected=new.status, **values)
    count = session.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.status == "active"))
    if count != 1:
        raise RegistryConflict(f"{count} active versions after activating {new.name}; rolled back.")
    session.refresh(new)
    if previous is not None:
        session.refresh(previous)


# --- the promotion gate ----------------------------------------------------------------------------------


def require_same_active(session: Session, decision: GateDecision) -> ModelVersion | None:
    """Take the registry lock and return the active version; `ActiveChanged` if `decision` was measured against
    another one and depends on it. Call before `add_version`, so that a conflict leaves nothing to undo on disk."""
    _lock_registry(session)
    active = _current_active(session)
    active_id = None if active is None else active.id
    if decision.depends_on_active and active_id != decision.active_id:
        was = "none" if decision.active_id is None else f"version id {decision.active_id}"
        now = "none" if active is None else active.name
        raise ActiveChanged(f"the active version changed during gating (compared with {was}, now {now}).")
    return active


def apply_promotion_gate(
    session: Session, *, version_id: int, decision: GateDecision, settings: Settings, verify: bool = True
) -> GateDecision:
    """Apply a decision measured beforehand (`trainer.judge`): activate the candidate or mark it rejected, and record
    `metrics["gate"]`. Only quick work: the lock, a re-check of the active version, two guarded UPDATEs.

    `ActiveChanged` when the active version is not the one `decision` was measured against (nothing is written).
    Before promoting, the files are hash-checked (a read of the whole checkpoint, in the caller's transaction);
    `verify=False` skips that for a version `add_version` placed in this same transaction from files just hashed.
    """
    active = require_same_active(session, decision)
    new = _fresh_version(session, version_id)
    if new.status != "candidate":
        raise InvalidInput(f"{new.name} is {new.status}; only candidates go through the gate (use promote_version).")
    if decision.promoted and verify:
        try:
            require_files(settings, new)
        except VersionFilesError as exc:
            decision = decision.overruled(f"files failed verification: {exc}")
    metrics = {**(new.metrics or {}), "gate": decision.record}
    if not decision.promoted:
        _set_status(session, new, expected="candidate", status="rejected", reason=decision.reason, metrics=metrics)
        session.refresh(new)
        return decision
    _switch_active(
        session,
        new=new,
        previous=active,
        reason=decision.reason,
        previous_reason=f"replaced by {new.name}",
        promoted_at=utcnow(),
        metrics=metrics,
    )
    return decision


# --- manual promotion and rollback -----------------------------------------------------------------------


def promote_version(
    session: Session, *, version_id: int, reason: str, settings: Settings, verified: bool = False
) -> ModelVersion:
    """Activate any non-active version without the gate (a researcher's decision), after checking its files.

    `verified=True`: the caller hash-checked the files (`verify_version_files`) before opening this transaction,
    so only their presence is checked here and the write lock is not held while a checkpoint is read."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("A manual promotion needs a reason (who decided and why).")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidInput(f"The reason is {len(reason)} characters; keep it under {MAX_REASON_CHARS}.")
    _lock_registry(session)
    new = _fresh_version(session, version_id)
    if new.status == "active":
        raise InvalidInput(f"{new.name} is already the active version.")
    (require_present if verified else require_files)(settings, new)
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


def rollback(session: Session, *, settings: Settings, verified_id: int | None = None) -> ModelVersion:
    """Retire the active version ("rolled back") and re-activate the one that was active before it.

    `verified_id`: the version whose files the caller hash-checked before this transaction (`rollback_target`);
    when it is still the target only the files' presence is checked here."""
    _lock_registry(session)
    current = _current_active(session)
    if current is None:
        raise InvalidInput("Nothing to roll back: no version is active.")
    target = _rollback_target(session, current)
    if target is None:
        raise InvalidInput(f"Nothing to roll back to: no version was active before {current.name}.")
    (require_present if target.id == verified_id else require_files)(settings, target)
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


def rollback_target(session: Session) -> ModelVersion | None:
    """The version a rollback would re-activate now (None: nothing is active, or nothing was before it)."""
    current = _current_active(session)
    return None if current is None else _rollback_target(session, current)
