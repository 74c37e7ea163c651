from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from storage.db import current_revision, upgrade
from storage.models import Base


def test_migrations_produce_the_models_schema(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())


def test_upgrade_is_idempotent(engine):
    before = current_revision(engine)
    upgrade(engine)
    assert current_revision(engine) == before is not None


def _raw_store_at_0002(settings):
    from storage.db import make_engine

    engine = make_engine(f"sqlite:///{settings.data_dir / 'old.db'}")
    upgrade(engine, "0002")
    rows = [
        "INSERT INTO images (id, sha256, width, height, format, byte_size, created_at) "
        "VALUES (1, 'x', 8, 8, 'png', 10, '2026-12-01')",
        "INSERT INTO users (id, name, role, active, created_at) VALUES (1, 'ann', 'annotator', 1, '2026-12-01')",
    ]
    for task_id, origin in enumerate(["demo", "upload", "editreward"], start=1):
        rows.append(f"INSERT INTO tasks (id, source_image_id, instruction, origin, created_at) "
                    f"VALUES ({task_id}, 1, 'edit', '{origin}', '2026-12-01')")
        for side in (0, 1):
            rows.append(f"INSERT INTO candidates (id, task_id, image_id, generator, created_at) "
                        f"VALUES ({task_id * 2 + side}, {task_id}, 1, 'g{side}', '2026-12-01')")
        rows.append(f"INSERT INTO pairs (id, task_id, candidate_a_id, candidate_b_id, vote_count, filled, priority) "
                    f"VALUES ({task_id}, {task_id}, {task_id * 2}, {task_id * 2 + 1}, 1, 1, 0)")
    for vote_id, origin in enumerate(["demo", "annotate", "editreward"], start=1):
        rows.append(f"INSERT INTO votes (id, task_id, pair_id, left_candidate_id, right_candidate_id, choice, "
                    f"client_submission_id, origin, created_at) VALUES ({vote_id}, {vote_id}, {vote_id}, "
                    f"{vote_id * 2}, {vote_id * 2 + 1}, 'left', 's{vote_id}', '{origin}', '2026-12-01')")
    with engine.begin() as conn:
        for row in rows:
            conn.exec_driver_sql(row)
    return engine


def test_0003_classifies_existing_rows_by_origin_and_downgrades(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = _raw_store_at_0002(settings)
    upgrade(engine)
    with engine.connect() as conn:
        tasks = conn.exec_driver_sql("SELECT origin, provenance, source FROM tasks ORDER BY id").all()
        votes = conn.exec_driver_sql("SELECT origin, provenance FROM votes ORDER BY id").all()
    assert [tuple(t) for t in tasks] == [("demo", "demo", None), ("upload", "human", None),
                                         ("editreward", "import", None)]
    assert [tuple(v) for v in votes] == [("demo", "demo"), ("annotate", "human"), ("editreward", "import")]
    from storage.db import alembic_config
    from alembic import command

    command.downgrade(alembic_config(engine), "0002")
    assert "provenance" not in {c["name"] for c in inspect(engine).get_columns("votes")}
    assert "annotator_flags" not in inspect(engine).get_table_names()
    engine.dispose()


def test_the_store_refuses_a_second_active_version(factory):
    import pytest
    from sqlalchemy.exc import IntegrityError

    from storage.models import ModelVersion

    with factory() as session:
        session.add(ModelVersion(name="v1", path="a", backbone="tiny", status="active"))
        session.add(ModelVersion(name="v2", path="b", backbone="tiny", status="retired"))
        session.add(ModelVersion(name="v3", path="c", backbone="tiny", status="retired"))  # many of any other status
        session.commit()
        session.add(ModelVersion(name="v4", path="d", backbone="tiny", status="active"))
        with pytest.raises(IntegrityError):
            session.commit()
