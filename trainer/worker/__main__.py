"""`python -m trainer.worker [run | enqueue | cancel RUN | runs | logs RUN] [--database URL]`.

Bad input prints one line `error: …` and exits with status 2. See docs/operations.md ("Worker").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from storage.db import make_engine, session_factory, transaction, upgrade
from storage.errors import InvalidInput, NotFound
from storage.settings import Settings, SettingsError, load_settings
from trainer import runs_queue
from trainer.runs_backoff import automatic_runs_alert
from trainer.worker.scheduler import run_worker

log = logging.getLogger("trainer.worker")

EXIT_BAD_INPUT = 2
ENQUEUE_FLAGS = ("lm_weight", "epochs", "max_steps", "backbone")  # options named after their run params


class CliError(Exception):
    """Bad input: printed as one line, exit status 2."""


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); e.g. '{{\"lr\": 0.001}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"lr\": 0.001}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    """`run` (the default), `enqueue`, `cancel`, `runs`, `logs`; `--database` everywhere."""
    parser = argparse.ArgumentParser(prog="python -m trainer.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--database", help="SQLAlchemy URL of the store (default: $JRM_DATABASE_URL or SQLite).")
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--database", default=argparse.SUPPRESS, help="SQLAlchemy URL of the store.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", parents=[database], help="Start the scheduler (the default command).")
    enqueue = commands.add_parser("enqueue", parents=[database], help="Queue a training run (trigger 'manual').")
    enqueue.add_argument("--lm-weight", type=float, help="λ in L = L_pref + λ·L_lm (0: discriminative baseline).")
    enqueue.add_argument("--epochs", type=int, help="Passes over the training votes.")
    enqueue.add_argument("--max-steps", type=int, help="Stop after this many optimizer steps.")
    enqueue.add_argument("--backbone", help="Preset ('tiny-edit' default, 'tiny'), hub id or folder.")
    enqueue.add_argument("--params", type=_json_object, default={}, help="More run params as a JSON object.")
    cancel = commands.add_parser("cancel", parents=[database], help="Cancel a queued or running run.")
    cancel.add_argument("run_id", type=int, metavar="RUN")
    runs = commands.add_parser("runs", parents=[database], help="List the newest runs.")
    runs.add_argument("--limit", type=int, default=20, help="How many runs (default 20).")
    logs = commands.add_parser("logs", parents=[database], help="Print a run's training log.")
    logs.add_argument("run_id", type=int, metavar="RUN")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(database_url=args.database)


@contextmanager
def _sessions(args: argparse.Namespace, *, read_only: bool = False) -> Iterator[sessionmaker[Session]]:
    """Sessions on the migrated store named by --database; the engine is closed afterwards."""
    engine = make_engine(_settings(args).resolved_database_url)
    try:
        upgrade(engine)
        yield session_factory(engine, read_only=read_only)
    finally:
        engine.dispose()


def command_enqueue(args: argparse.Namespace) -> int:
    """Queue a manual run with the given params; print its id."""
    given = {key: getattr(args, key) for key in ENQUEUE_FLAGS if getattr(args, key) is not None}
    params = {**args.params, **given}
    with _sessions(args) as factory, transaction(factory) as session:
        run = runs_queue.enqueue_run(session, params=params, trigger="manual")
        run_id = run.id
    print(f"queued run {run_id}")
    return 0


def command_cancel(args: argparse.Namespace) -> int:
    """Cancel a run."""
    with _sessions(args) as factory, transaction(factory) as session:
        run = runs_queue.cancel_run(session, run_id=args.run_id)
        was_training = run.started_at is not None
    print(f"cancelled run {args.run_id}" + (" (its worker stops the training process)" if was_training else ""))
    return 0


def command_runs(args: argparse.Namespace) -> int:
    """Print the newest runs as a table, and the alert when automatic runs are paused after failures."""
    with _sessions(args, read_only=True) as factory, factory() as session:
        runs = runs_queue.list_runs(session, limit=args.limit)
        alert = automatic_runs_alert(session)
    print(f"{'id':>5}  {'status':<10} {'trigger':<10} {'progress':>8}  {'created (UTC)':<19}  error")
    for run in runs:
        error = (run.error or "").strip().splitlines()[0][:70] if run.error else ""
        created = run.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{run.id:>5}  {run.status:<10} {run.trigger:<10} {run.progress:>8.0%}  {created:<19}  {error}")
    if alert is not None:
        print(f"\nwarning: {alert}")
    return 0


def command_logs(args: argparse.Namespace) -> int:
    """Print the run's training log."""
    with _sessions(args, read_only=True) as factory, factory() as session:
        run = runs_queue.get_run(session, run_id=args.run_id)
        status, log_path = run.status, run.log_path
    if not log_path:
        raise CliError(f"Run {args.run_id} ({status}) has no log: a log starts when a worker begins training it.")
    path = Path(log_path)
    if not path.is_file():
        raise CliError(f"Run {args.run_id}'s log {path} is missing (was the data folder moved or cleaned up?).")
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            sys.stdout.buffer.write(block)
    sys.stdout.flush()
    return 0


def command_run(args: argparse.Namespace) -> int:
    """Start the scheduler in the foreground."""
    run_worker(_settings(args))  # no torch here: the training process sets its threads from JRM_TORCH_THREADS
    return 0


COMMANDS = {
    "run": command_run,
    "enqueue": command_enqueue,
    "cancel": command_cancel,
    "runs": command_runs,
    "logs": command_logs,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand (default `run`); 0 on success, 2 on bad input."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command in (None, "run"):
        log.setLevel(logging.INFO)  # what the worker does; the libraries' INFO lines stay out
    try:
        return COMMANDS[args.command or "run"](args)
    except (CliError, InvalidInput, NotFound, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
