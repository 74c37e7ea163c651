"""`python -m trainer gc | pin | unpin`: the retention rules from the command line (docs/operations.md, Retention)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_commands(commands, database_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """The gc, pin and unpin subcommands."""
    gc = commands.add_parser(
        "gc",
        help="Remove unused image blobs, old exports, old run snapshots and old versions' "
        "files (docs/operations.md, Retention).",
    )
    database_option(gc)
    gc.add_argument("--dry-run", action="store_true", help="Only print what would be removed.")
    gc.add_argument("--list", action="store_true", help="One row per removed item instead of one per kind.")
    for name, does in (("pin", "Keep a version's files whatever its age"), ("unpin", "Let a version's files go")):
        sub = commands.add_parser(name, help=f"{does} (the garbage collection's version rule).")
        database_option(sub)
        sub.add_argument("version", help="Version name, e.g. v0003.")


def _store(args: argparse.Namespace):
    """Settings (with --database) and a migrated store's session factory, without torch."""
    from storage.db import make_engine, session_factory, upgrade
    from storage.settings import load_settings

    settings = load_settings(database_url=args.database)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    return settings, session_factory(engine)


def command_gc(args: argparse.Namespace) -> int:
    """Apply every retention rule (or only report them with --dry-run) and print what went and the bytes freed."""
    from trainer.retention import collect_garbage

    settings, factory = _store(args)
    report = collect_garbage(factory, settings, dry_run=args.dry_run)
    print("\n".join(report.lines(itemised=args.list)))
    return 0


def command_pin(args: argparse.Namespace) -> int:
    """Pin or unpin a version against the garbage collection."""
    from storage.db import transaction
    from trainer.retention import pin_version

    settings, factory = _store(args)
    with transaction(factory) as session:
        version = pin_version(session, name=args.version, pinned=args.command == "pin")
        name = version.name
    print(f"{name} is {'pinned: its files stay' if args.command == 'pin' else 'no longer pinned'}")
    return 0


COMMANDS = {"gc": command_gc, "pin": command_pin, "unpin": command_pin}
