"""`python -m app`: start JRM Studio on the embedded defaults.

Until the web UI lands this prepares what exists: the schema is upgraded, the demo data is seeded on an
empty store, and a summary of the store is printed.
"""

from __future__ import annotations

import argparse
import sys

from storage.db import make_engine, session_factory, upgrade
from storage.demo import ensure_demo_data
from storage.repository import dataset_stats
from storage.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument("--database", help="SQLAlchemy URL (default: JRM_DATABASE_URL or SQLite in JRM_DATA_DIR)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(database_url=args.database)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    factory = session_factory(engine)
    seeded = ensure_demo_data(factory, settings=settings)
    if seeded is not None:
        print(f"Seeded the demo dataset: {seeded}")
    with factory() as session:
        stats = dataset_stats(session)
    print(f"Store ready at {engine.url.render_as_string(hide_password=True)}")
    print(f"  tasks {stats.tasks} · candidates {stats.candidates} · votes {stats.votes} · tie rate {stats.tie_rate:.0%}")
    print("The web UI (Gradio) is not built yet; see the README for what is available.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
