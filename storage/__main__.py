"""`python -m storage`: schema upgrades, users, demo data, statistics, import and export.

Every command takes `--database URL` (default: JRM_DATABASE_URL, else SQLite in JRM_DATA_DIR), brings the
schema to head first, and runs its work in one transaction. Bad input exits with status 2 and a one-line
message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session

from storage import users
from storage.db import current_revision, make_engine, session_factory, transaction, upgrade
from storage.errors import InvalidInput
from storage.models import ROLES
from storage.settings import Settings, SettingsError, configuration_table, load_settings, password_from_env

EXIT_INPUT_ERROR = 2
Handler = Callable[[argparse.Namespace, Session, Settings], None]


def _out(line: str = "") -> None:
    print(line, flush=True)


# --- commands -----------------------------------------------------------------------------------------------


def cmd_users_add(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    password = password_from_env() or _prompt_password()
    user = users.create_user(session, name=args.name, role=args.role, password=password)
    _out(f"added user {user.name} ({user.role})")


def _prompt_password() -> str:
    if not sys.stdin.isatty():
        raise InvalidInput("No password: set JRM_USER_PASSWORD or run the command in a terminal to be prompted.")
    first = getpass.getpass("Password: ")
    if not first:
        raise InvalidInput("The password is empty; choose a non-empty password.")
    if getpass.getpass("Repeat password: ") != first:
        raise InvalidInput("The two passwords differ; run the command again.")
    return first


def cmd_users_list(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    rows = [(u.name, u.role, "active" if u.active else "inactive", "yes" if u.password_hash else "no")
            for u in users.list_users(session)]
    _print_table(("name", "role", "status", "can log in"), rows)


def cmd_users_set_role(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    user = users.set_role(session, name=args.name, role=args.role)
    _out(f"{user.name} is now {user.role}")


def cmd_users_deactivate(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    user = users.deactivate(session, name=args.name)
    _out(f"deactivated {user.name}")


def cmd_demo(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    from storage.demo import build_demo

    _print_value(build_demo(session, tasks=args.tasks, seed=args.seed, settings=settings))


def cmd_stats(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    from storage.stats import dataset_stats

    _print_value(dataset_stats(session, settings=settings))


def cmd_import(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    from storage import importers

    if args.format == "editreward":
        summary = importers.import_editreward(session, path=args.file, images_root=args.images_root,
                                              settings=settings)
    elif args.format == "folder":
        summary = importers.import_folder(session, root=args.dir, settings=settings)
    else:
        summary = importers.import_hf(session, path=args.path, settings=settings)
    _out(str(summary))


def cmd_export(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    from storage import exporters

    chosen = _selection(args, session, settings, exclude_flagged=False)
    if args.format in ("hf", "parquet"):
        count = exporters.export_hf(session, out=args.out, settings=settings, parquet=args.format == "parquet",
                                    selection=chosen)
    elif args.format == "trl":
        count = exporters.export_trl(session, out=args.out, settings=settings, selection=chosen)
    else:
        count = exporters.export_editreward(session, out=args.out, images_dir=args.images_dir, settings=settings,
                                            selection=chosen)
    _out(f"exported {count} votes ({', '.join(chosen.provenances)}) to {args.out}")


def _selection(args: argparse.Namespace, session: Session, settings: Settings, *, exclude_flagged: bool):
    """`--provenance a,b` when given, else the store's default (human + import; demo in a demo-only store)."""
    from storage.provenance import VoteSelection, vote_selection

    chosen = vote_selection(session, settings=settings, exclude_flagged=exclude_flagged)
    if args.provenance:
        return VoteSelection(tuple(p.strip() for p in args.provenance.split(",") if p.strip()),
                             chosen.excluded_annotators)
    return chosen


def cmd_agreement(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    from storage import audit

    chosen = _selection(args, session, settings, exclude_flagged=False)  # the check looks at everyone's votes
    version_id = _version_id(session, args.version)
    report = audit.quality_report(session, selection=chosen, version_id=version_id)
    versions = audit.agreement_by_version(session, audit.pair_votes(session, selection=chosen))
    if args.write_flags:
        audit.write_flags(session, report)
    if args.json:
        payload = {**report.to_json(), "provenances": list(chosen.provenances),
                   "versions": [dataclasses.asdict(v) for v in versions]}
        _out(json.dumps(payload, indent=1, default=str))
        return
    _out(f"Krippendorff's alpha (nominal, {', '.join(chosen.provenances)} votes): {_num(report.krippendorff_alpha)}")
    _print_table(("annotator", "votes", "left rate", "p", "median s", "model agr.", "flagged", "reasons"),
                 [(a.name, a.votes, _num(a.left_rate), _num(a.left_rate_p), _num(a.median_seconds),
                   _num(a.model_agreement), "yes" if a.flagged else "",
                   "; ".join(a.reasons)) for a in report.annotators])
    if versions:
        _out()
        _print_table(("version", "status", "agreement with humans", "decisive votes"),
                     [(v.name, v.status, _num(v.agreement), v.votes) for v in versions])


def _version_id(session: Session, name: str | None) -> int | None:
    """The id of version `name`, or of the active version when no name is given (None when there is none)."""
    from sqlalchemy import select

    from storage.models import ModelVersion

    query = select(ModelVersion.id).where(ModelVersion.name == name if name else ModelVersion.status == "active")
    version_id = session.scalar(query)
    if name and version_id is None:
        raise InvalidInput(f"no model version is named {name!r}; see the Research tab for the names.")
    return version_id


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def cmd_flags_clear(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    from storage import audit

    researcher = users.get_user_by_name(session, name=args.by) if args.by else None
    if args.by and researcher is None:
        raise InvalidInput(f"no user is named {args.by!r}; --by names the researcher who clears the flag.")
    audit.clear_flag(session, annotator=args.name, cleared_by_id=researcher and researcher.id, reason=args.reason)
    _out(f"cleared the flag on {args.name}: their votes train again")


def cmd_gold(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    from storage import audit

    pair = audit.set_gold(session, pair_id=args.pair_id, answer=None if args.clear else args.answer)
    _out(f"pair {pair.id} is a gold pair with answer {pair.gold}" if pair.gold else f"pair {pair.id} is not gold")


def cmd_users_cap(args: argparse.Namespace, session: Session, settings: Settings) -> None:
    user = users.set_daily_cap(session, name=args.name, cap=args.cap)
    _out(f"{user.name} may cast {user.daily_vote_cap or 'any number of'} votes a day"
         + ("" if user.daily_vote_cap else " (the store's JRM_DAILY_VOTE_CAP applies)"))


# --- output -------------------------------------------------------------------------------------------------


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = [tuple(header), *[tuple(str(cell) for cell in row) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        _out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _print_value(value: object) -> None:
    """A dataclass or mapping as `key: value` lines; anything else as its text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        for key, item in value.items():
            _out(f"{key}: {json.dumps(item, default=str) if isinstance(item, list | dict) else item}")
    else:
        _out(str(value))


def _print_configuration(url: str) -> None:
    for name, default, help_text in configuration_table():
        _out(f"{name:<28} {default:<22} {help_text}")
    _out(f"\ndatabase in use: {make_url(url).render_as_string(hide_password=True)}")


# --- parser -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; each leaf sets `handler`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database", metavar="URL", help="SQLAlchemy URL (default: JRM_DATABASE_URL, else "
                                                          "SQLite at $JRM_DATA_DIR/jrm.db)")
    parser = argparse.ArgumentParser(prog="python -m storage", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("upgrade", parents=[common], help="bring the schema to the latest revision")
    commands.add_parser("config", parents=[common], help="print the JRM_* settings with defaults and help")
    _add_users(commands, common)
    demo = commands.add_parser("demo", parents=[common], help="generate the demo dataset")
    demo.add_argument("--tasks", type=int, default=24, help="number of tasks (default 24)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(handler=cmd_demo)
    commands.add_parser("stats", parents=[common], help="print dataset statistics").set_defaults(handler=cmd_stats)
    _add_import(commands, common)
    _add_export(commands, common)
    _add_quality(commands, common)
    return parser


def _add_quality(commands, common: argparse.ArgumentParser) -> None:
    agreement = commands.add_parser("agreement", parents=[common],
                                    help="annotator agreement (kappa, alpha), quality checks and flags")
    agreement.add_argument("--json", action="store_true", help="print the report as JSON")
    agreement.add_argument("--version", help="model version for model agreement (default: the active one)")
    agreement.add_argument("--provenance", help="comma-separated provenances (default: the store's selection)")
    agreement.add_argument("--write-flags", action="store_true", help="store the verdicts (the worker does so "
                                                                         "after each promotion)")
    agreement.set_defaults(handler=cmd_agreement)
    flags = commands.add_parser("flags", help="annotator quality flags").add_subparsers(dest="action", required=True,
                                                                                         metavar="ACTION")
    clear = flags.add_parser("clear", parents=[common], help="clear a flag: the annotator's votes train again")
    clear.add_argument("name")
    clear.add_argument("--reason", required=True, help="why the flag is cleared (kept with it)")
    clear.add_argument("--by", help="the researcher's user name")
    clear.set_defaults(handler=cmd_flags_clear)
    gold = commands.add_parser("gold", parents=[common], help="mark a pair's known answer (a gold pair) or --clear it")
    gold.add_argument("pair_id", type=int)
    gold.add_argument("answer", nargs="?", help="a (candidate A, the lower id, is better), b, tie or both_bad")
    gold.add_argument("--clear", action="store_true", help="the pair is no longer gold")
    gold.set_defaults(handler=cmd_gold)


def _add_users(commands, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("users", help="manage users").add_subparsers(dest="action", required=True,
                                                                              metavar="ACTION")
    add = group.add_parser("add", parents=[common], help="add a user (password from JRM_USER_PASSWORD or a prompt)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="annotator")
    add.set_defaults(handler=cmd_users_add)
    group.add_parser("list", parents=[common], help="list users").set_defaults(handler=cmd_users_list)
    set_role = group.add_parser("set-role", parents=[common], help="change a user's role")
    set_role.add_argument("name")
    set_role.add_argument("role", choices=ROLES)
    set_role.set_defaults(handler=cmd_users_set_role)
    deactivate = group.add_parser("deactivate", parents=[common], help="stop a user from logging in")
    deactivate.add_argument("name")
    deactivate.set_defaults(handler=cmd_users_deactivate)
    cap = group.add_parser("cap", parents=[common], help="set a user's daily vote cap (0: the store's setting)")
    cap.add_argument("name")
    cap.add_argument("cap", type=int)
    cap.set_defaults(handler=cmd_users_cap)


def _add_import(commands, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("import", help="import votes (one transaction: all or nothing)").add_subparsers(
        dest="format", required=True, metavar="FORMAT")
    editreward = group.add_parser("editreward", parents=[common], help="EditReward-Data JSON list")
    editreward.add_argument("file", type=Path)
    editreward.add_argument("--images-root", type=Path, required=True, help="folder the image paths are relative to")
    folder = group.add_parser("folder", parents=[common], help="folder layout (docs/data-formats.md)")
    folder.add_argument("dir", type=Path)
    hf = group.add_parser("hf", parents=[common], help="datasets save_to_disk folder or .parquet file")
    hf.add_argument("path", type=Path)
    for sub in (editreward, folder, hf):
        sub.set_defaults(handler=cmd_import)


def _add_export(commands, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("export", help="export votes").add_subparsers(dest="format", required=True,
                                                                               metavar="FORMAT")
    hf = group.add_parser("hf", parents=[common], help="datasets save_to_disk folder, one row per vote")
    parquet = group.add_parser("parquet", parents=[common], help="the same rows as one parquet file")
    trl = group.add_parser("trl", parents=[common], help="TRL-style prompt/images/chosen/rejected "
                                                         "(a folder, or a .parquet file)")
    editreward = group.add_parser("editreward", parents=[common], help="EditReward-Data JSON list")
    editreward.add_argument("--images-dir", type=Path, required=True, help="where the images are written")
    for sub in (hf, parquet, trl, editreward):
        sub.add_argument("out", type=Path)
        sub.add_argument("--provenance", help="comma-separated provenances to export: human, import, demo "
                                              "(default: the store's selection)")
        sub.set_defaults(handler=cmd_export)


# --- main ---------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    """Open the store named by the settings or `--database`, upgrade it, and run the command."""
    settings = load_settings()
    url = args.database or settings.resolved_database_url
    if args.command == "config":  # opens no database: it must work while the database is unreachable
        _print_configuration(url)
        return
    engine = make_engine(url)
    try:
        upgrade(engine)
        if args.command == "upgrade":
            _out(f"{make_url(url).render_as_string(hide_password=True)} is at revision {current_revision(engine)}")
            return
        with transaction(session_factory(engine, read_only=_read_only(args))) as session:
            args.handler(args, session, settings)
    finally:
        engine.dispose()


READ_ONLY_COMMANDS = (cmd_stats, cmd_export, cmd_users_list)


def _read_only(args: argparse.Namespace) -> bool:
    """Exports, statistics and a report that writes no flags must not block annotators' votes."""
    return args.handler in READ_ONLY_COMMANDS or (args.handler is cmd_agreement and not args.write_flags)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (InvalidInput, SettingsError, FileNotFoundError, ArgumentError) as exc:
        return _fail(str(exc))
    except OperationalError as exc:
        return _fail(f"cannot use the database: {str(exc.orig).strip().splitlines()[0]}")
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was committed")
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
