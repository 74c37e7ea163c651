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


def _sqlite_foreign_keys(connection, on: bool) -> None:
    """Batch mode rebuilds a table (copy, DROP, rename); with foreign keys enforced, dropping a table that others
    reference fails, so they are off while migrations run and checked once they are back on."""
    # On the driver's own connection: SQLAlchemy would open a transaction first, inside which SQLite ignores it.
    raw = connection.connection.dbapi_connection
    raw.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    if on:
        broken = raw.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"the migration left rows whose foreign keys point nowhere: {broken[:5]}")


with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _sqlite_foreign_keys(connection, on=False)
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=sqlite,  # SQLite needs batch mode to ALTER
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
    if sqlite:
        _sqlite_foreign_keys(connection, on=True)
