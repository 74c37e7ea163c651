"""App fixtures: a store with demo data and a trained, promoted tiny model, on SQLite and on PostgreSQL.

Fixtures (names are the API other app tests use):

- `app_template` (session): an `AppTemplate`, built once per session: a SQLite store in its own data folder with
  `APP_DEMO_TASKS` demo tasks (candidates + simulated votes) and version `v0001` trained for a few steps by
  `trainer.pipeline.run_training_job` and active. Read-only: never write to it.
- `app_store` (function, params "sqlite" | "postgresql"): an `AppStore`, a private copy of the template
  (data folder copied; on PostgreSQL the rows are copied into a fresh schema, ids kept), with `engine`, `factory`,
  `settings` (data_dir = the copy, database_url = the store), `backend`, `version_id`, `version_name`.
- `app_factory`, `app_settings` (function): `app_store.factory` and `app_store.settings`.
- `shifted_model_dir` (session): a saved JRM (LM head included) whose every score is exactly the trained model's
  + `SHIFT`; publish it with `publish_model_dir()` to get a second, distinguishable version.
- `scoring_service` (function): an `app.scoring.ScoringService` on `app_store`, already `refresh()`ed (serving
  v0001, real loader), not `start()`ed; stopped at teardown.

Helpers: `publish_model_dir(factory, settings, folder, *, promote=True) -> (version id, name)`.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: tests never touch the network

import dataclasses  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from app.scoring import ScoringService  # noqa: E402
from storage.db import make_engine, session_factory, transaction, upgrade  # noqa: E402
from storage.demo import build_demo  # noqa: E402
from storage.models import Base  # noqa: E402
from storage.settings import Settings, load_settings  # noqa: E402
from tests.conftest import BACKENDS, make_test_engine  # noqa: E402
from trainer.model import JointRewardModel  # noqa: E402
from trainer.pipeline import create_run, run_training_job  # noqa: E402
from trainer.registry import MANIFEST, promote_version, publish_version  # noqa: E402

torch.set_num_threads(1)

APP_DEMO_TASKS = 6
APP_DEMO_SIZE = 48  # px: small pictures keep the demo build and the tiny model fast
TRAIN_PARAMS = {"max_steps": 3, "batch_size": 4, "log_every": 1}
SHIFT = 1.0


@dataclass(frozen=True)
class AppTemplate:
    data_dir: Path
    version_name: str

    @property
    def version_dir(self) -> Path:
        return self.data_dir / "models" / self.version_name


@dataclass(frozen=True)
class AppStore:
    engine: Engine
    factory: sessionmaker[Session]
    settings: Settings
    backend: str
    version_id: int
    version_name: str


@pytest.fixture(scope="session")
def app_template(tmp_path_factory) -> AppTemplate:
    settings = load_settings(environ={}, data_dir=tmp_path_factory.mktemp("app-template") / "data")
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    factory = session_factory(engine)
    with transaction(factory) as session:
        build_demo(session, tasks=APP_DEMO_TASKS, seed=0, settings=settings, size=APP_DEMO_SIZE)
    with transaction(factory) as session:
        run_id = create_run(session, params=TRAIN_PARAMS, trigger="manual").id
    version = run_training_job(factory, run_id=run_id, settings=settings)
    if version.status != "active":  # the gate rejects it (too few held-out votes to judge): promote it by hand
        with transaction(factory) as session:
            promote_version(session, version_id=version.id, reason="app test fixture", settings=settings)
    engine.dispose()  # checkpoints the WAL into jrm.db, so a file copy is the whole store
    return AppTemplate(data_dir=settings.data_dir, version_name=version.name)


@pytest.fixture(params=BACKENDS)
def app_store(request, settings, app_template) -> Iterator[AppStore]:
    shutil.copytree(app_template.data_dir, settings.data_dir)
    copied_sqlite = settings.resolved_database_url
    if request.param == "sqlite":
        engine, teardown = make_engine(copied_sqlite), None
    else:
        engine, teardown = make_test_engine("postgresql", settings)
        _copy_rows(make_engine(copied_sqlite), engine)
        (settings.data_dir / "jrm.db").unlink()
    url = engine.url.render_as_string(hide_password=False)
    store_settings = dataclasses.replace(settings, database_url=url)
    factory = session_factory(engine)
    with factory() as session:
        version_id = session.scalar(text("SELECT id FROM model_versions WHERE status = 'active'"))
    yield AppStore(engine, factory, store_settings, request.param, version_id, app_template.version_name)
    if teardown is None:
        engine.dispose()
    else:
        teardown()


def _copy_rows(source: Engine, target: Engine) -> None:
    """Every row of every table, ids kept; PostgreSQL sequences moved past them."""
    with source.connect() as src, target.begin() as dst:
        for table in Base.metadata.sorted_tables:
            rows = [{k: _aware(v) for k, v in row._mapping.items()} for row in src.execute(table.select())]
            if rows:
                dst.execute(table.insert(), rows)
            if "id" in table.c and rows:
                top = max(row["id"] for row in rows)
                dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), {top})"))
    source.dispose()


def _aware(value: object) -> object:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL's timestamptz wants them aware."""
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value


@pytest.fixture
def app_factory(app_store) -> sessionmaker[Session]:
    return app_store.factory


@pytest.fixture
def app_settings(app_store) -> Settings:
    return app_store.settings


@pytest.fixture(scope="session")
def shifted_model_dir(app_template, tmp_path_factory) -> Path:
    model = JointRewardModel.load(app_template.version_dir)
    with torch.no_grad():
        model.reward_head[-1].bias += SHIFT  # every reward moves by exactly SHIFT
    return model.save(tmp_path_factory.mktemp("shifted") / "model")


def publish_model_dir(
    factory: sessionmaker[Session], settings: Settings, folder: Path, *, promote: bool = True
) -> tuple[int, str]:
    """Publish the saved model in `folder` as a new version (promoted when `promote`); (id, name)."""

    def save(target: Path) -> None:
        shutil.copytree(folder, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST))

    with transaction(factory) as session:
        version = publish_version(session, save=save, settings=settings, backbone="tiny", config={}, metrics=None)
        if promote:
            promote_version(session, version_id=version.id, reason="app test", settings=settings)
        return version.id, version.name


@pytest.fixture
def scoring_service(app_store) -> Iterator[ScoringService]:
    service = ScoringService(app_store.factory, app_store.settings)  # the one scorer loader
    assert service.refresh(), "the app store's active version did not load"
    yield service
    service.stop()


@pytest.fixture
def reward_scoring(app_store) -> Iterator[ScoringService]:
    """The scoring service as the reward server builds it (tests.app.reward_support.reward_service), stopped after."""
    from tests.app.reward_support import reward_service

    service = reward_service(app_store)
    yield service
    service.stop()


__all__ = ["APP_DEMO_TASKS", "SHIFT", "AppStore", "AppTemplate", "publish_model_dir"]
