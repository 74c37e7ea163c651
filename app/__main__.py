"""`python -m app`: start JRM Studio — the web app, its scorer and (unless --no-worker) the retraining worker.

On start the schema is upgraded and, in local mode (no log-in, a SQLite file) or with --demo-data, an
empty store gets the demo dataset; the worker then trains the first model version on it, and the scorer serves it
as soon as it is promoted. A team's store (PostgreSQL, or --auth) is never seeded unless asked to. The app binds
127.0.0.1 by default; any other address needs authentication (`--auth` or JRM_AUTH=1), with users from
`python -m storage users add`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.deps import Deps
from app.heap import settle
from app.network import is_loopback
from storage.db import make_engine, session_factory, upgrade
from storage.demo import ensure_demo_data
from storage.models import User
from storage.settings import Settings, SettingsError, load_settings

log = logging.getLogger("app")

LOGIN_HINT = "JRM_USER_PASSWORD=… python -m storage users add NAME --role admin"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="interface to bind (default: JRM_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default: JRM_PORT or 7860)")
    parser.add_argument("--auth", action=argparse.BooleanOptionalAction, default=None,
                        help="log in with the store's users (default: JRM_AUTH, off)")
    parser.add_argument("--no-worker", action="store_true", help="do not start the retraining worker in-process")
    parser.add_argument("--database", help="SQLAlchemy URL (default: JRM_DATABASE_URL or SQLite in JRM_DATA_DIR)")
    parser.add_argument("--demo-data", action=argparse.BooleanOptionalAction, default=None,
                        help="seed the demo dataset into an empty store (default: JRM_SEED_DEMO, auto = local mode "
                             "only)")
    return parser.parse_args(argv)


def should_seed_demo(settings: Settings) -> bool:
    """Seed the demo into an empty store? `yes`/`no` as set; `auto`: only in local mode (no log-in) on a SQLite file,
    so simulated votes never land in a team's store (PostgreSQL, or one with log-in) by accident."""
    if settings.seed_demo != "auto":
        return settings.seed_demo == "yes"
    return not settings.auth and make_url(settings.resolved_database_url).get_backend_name() == "sqlite"


def check_exposure(settings: Settings) -> str | None:
    """Why this bind is refused (a public address without log-in), or None when it is fine."""
    if settings.auth or is_loopback(settings.host):
        return None
    return (
        f"Refusing to serve on {settings.host} without authentication: anyone who can reach it could act as the "
        f"admin. Start with --auth (or JRM_AUTH=1) and create users first ({LOGIN_HINT}), or bind 127.0.0.1."
    )


def prepare_store(settings: Settings) -> sessionmaker[Session]:
    """Upgrade the schema and seed the demo data into an empty store; the session factory."""
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    factory = session_factory(engine)
    seed = settings.demo_tasks > 0 and should_seed_demo(settings)
    seeded = ensure_demo_data(factory, settings=settings, tasks=settings.demo_tasks) if seed else None
    if seeded is not None:
        log.info("Seeded the demo dataset: %s tasks, %s votes in %.0f s", seeded.tasks, seeded.votes, seeded.seconds)
    return factory


def has_login(factory: sessionmaker[Session]) -> bool:
    """True when at least one active user has a password (someone can log in)."""
    with factory() as session:
        query = select(User.id).where(User.active.is_(True), User.password_hash.is_not(None)).limit(1)
        return session.scalar(query) is not None


def start_worker(settings: Settings) -> Any | None:
    """The in-process worker's handle, or None when the worker module cannot start here (logged)."""
    try:
        from trainer.worker import start_background_worker
    except ImportError as exc:
        log.warning("The retraining worker is not available (%s); runs stay queued until one starts.", exc)
        return None
    return start_background_worker(settings)


def start_scoring(factory: sessionmaker[Session], settings: Settings) -> Any:
    """The started scoring service (it loads the active version in the background and follows promotions)."""
    from app.scoring import ScoringService  # lazy: torch loads only once the store is ready

    service = ScoringService(factory, settings, after_swap=settle)
    service.start()
    return service


def serve(deps: Deps) -> None:
    """Build the page and serve it until interrupted."""
    from app.serving import build_app, launch_options
    from app.ui import CSS, KEYBOARD_HEAD

    settings = deps.settings
    blocks = build_app(deps)
    settle()  # everything imported and built so far lives as long as the process (app.heap)
    blocks.launch(
        server_name=settings.host,
        server_port=settings.port,
        head=KEYBOARD_HEAD,
        css=CSS,
        footer_links=["api"],
        **launch_options(deps),
    )


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (a process manager stopping the app) ends the server like Ctrl-C, so the worker and scorer stop.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        seed_demo = None if args.demo_data is None else "yes" if args.demo_data else "no"
        settings = load_settings(database_url=args.database, host=args.host, port=args.port, auth=args.auth,
                                 seed_demo=seed_demo)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    refusal = check_exposure(settings)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apscheduler", "alembic", "httpx"):  # a line per scheduler tick or request drowns the app's own
        logging.getLogger(noisy).setLevel(logging.WARNING)
    factory = prepare_store(settings)
    if settings.auth and not has_login(factory):
        print(f"error: --auth is on but no user can log in; create one first: {LOGIN_HINT}", file=sys.stderr)
        return 2
    worker = None if args.no_worker else start_worker(settings)
    scoring = start_scoring(factory, settings)
    try:
        serve(Deps(factory=factory, settings=settings, scoring=scoring, worker=worker))
    finally:
        scoring.stop()
        if worker is not None:
            worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
