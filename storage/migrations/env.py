"""Alembic environment: the engine comes from `storage.db.alembic_config` (or JRM settings)."""

from alembic import context

from storage.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # plain `alembic` CLI use: fall back to the configured store
    from storage.db import make_engine
    from storage.settings import load_settings

    engine = make_engine(load_settings().resolved_database_url)

# Tables other libraries keep in the same database (APScheduler's job store) are not part of our schema.
FOREIGN_TABLES = {"apscheduler_jobs"}


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    return not (type_ == "table" and name in FOREIGN_TABLES)


with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs batch mode to ALTER
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
