"""Reading the registry: versions by id, the active one, the list; and `load_scorer`, the active version loaded by
the one scorer loader (`trainer.scorer.load_scorer_model`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import session_factory
from storage.errors import NotFound
from storage.models import ModelVersion
from storage.settings import Settings
from trainer.registry.files import verify_version_files, version_dir


def get_version(session: Session, *, version_id: int) -> ModelVersion:
    """The version with this id, or `NotFound`."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotFound(f"No model version with id {version_id}.")
    return version


def get_version_by_name(session: Session, *, name: str) -> ModelVersion:
    """The version named `name` (e.g. "v0003"), or `NotFound`."""
    version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).one_or_none()
    if version is None:
        raise NotFound(f"No model version named {name!r}; the Research tab lists the published ones.")
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

    The model comes from `trainer.scorer.load_scorer_model` (no LM head, the `JRM_SCORER_DTYPE` dtype; a LoRA version
    whose base changed is refused) unless `loader(path, device=…)` is given. Pass a session with no transaction open
    and none is held during the (slow) hash check and load.
    """
    version = _active_for_loading(session)
    if version is None:
        return None
    path = version_dir(settings, version)
    if verify:
        verify_version_files(path)
    if loader is None:
        from trainer.scorer import load_scorer_model  # lazy: the registry must not pull in torch models on import

        return version, load_scorer_model(path, settings=settings, device=device)
    return version, loader(path, device=device)
