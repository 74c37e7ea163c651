"""`python -m storage`, run as a subprocess against the test store (both backends)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

import storage.__main__ as cli
from storage.db import current_revision
from storage.models import User
from storage.users import authenticate, get_user_by_name
from tests.storage.test_interchange import editreward_records, row_counts, write_editreward

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "tr0ub4dor&3-secret"


@pytest.fixture
def run_cli(db_url, settings):
    """Run `python -m storage ARGS --database <test store>` with blobs in the test's data folder."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("JRM_")}
    base_env["JRM_DATA_DIR"] = str(settings.data_dir)

    def run(*args: str, env: dict[str, str] | None = None, database: bool = True) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "storage", *args, *(["--database", db_url] if database else [])]
        return subprocess.run(command, cwd=REPO, env={**base_env, **(env or {})}, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)

    return run


def assert_clean_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit status 2 and a one-line message on stderr, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_upgrade_prints_the_revision(run_cli, engine):
    result = run_cli("upgrade")
    assert result.returncode == 0, result.stderr
    assert f"is at revision {current_revision(engine)}" in result.stdout


def test_config_prints_the_settings_table(run_cli):
    result = run_cli("config")
    assert result.returncode == 0
    assert "JRM_DATA_DIR" in result.stdout and "JRM_MAX_PIXELS" in result.stdout
    assert "database in use: " in result.stdout


def test_users_lifecycle(run_cli, session, db_url):
    env = {"JRM_USER_PASSWORD": PASSWORD}
    added = run_cli("users", "add", "alice", "--role", "admin", env=env)
    assert added.returncode == 0, added.stderr
    assert "added user alice (admin)" in added.stdout
    outputs = [added, run_cli("users", "set-role", "alice", "researcher"), run_cli("users", "deactivate", "alice")]
    assert all(result.returncode == 0 for result in outputs), [r.stderr for r in outputs]
    listed = run_cli("users", "list", env={"JRM_DATABASE_URL": db_url}, database=False)  # URL from the env
    assert listed.stdout.splitlines()[1].split() == ["alice", "researcher", "inactive", "yes"]
    for result in [*outputs, listed]:
        assert PASSWORD not in result.stdout + result.stderr
    user = session.scalars(select(User)).one()
    assert PASSWORD not in (user.password_hash or "") and user.password_hash.startswith("scrypt$")
    assert authenticate(session, name="alice", password=PASSWORD) is None  # deactivated


def test_users_add_refuses_no_password_and_duplicates(run_cli, session):
    assert_clean_error(run_cli("users", "add", "bob"), "No password: set JRM_USER_PASSWORD")
    assert_clean_error(run_cli("users", "add", "bob", env={"JRM_USER_PASSWORD": ""}), "No password")
    assert run_cli("users", "add", "bob", env={"JRM_USER_PASSWORD": PASSWORD}).returncode == 0
    assert_clean_error(run_cli("users", "add", "BOB", env={"JRM_USER_PASSWORD": PASSWORD}), "is taken")
    assert_clean_error(run_cli("users", "deactivate", "ghost"), "No user named 'ghost'")
    assert [u.name for u in session.scalars(select(User))] == ["bob"]


def test_import_export_round_trip(run_cli, tmp_path, session):
    json_path, images_root = write_editreward(tmp_path / "in")
    imported = run_cli("import", "editreward", str(json_path), "--images-root", str(images_root))
    assert imported.returncode == 0, imported.stderr
    assert "3 new votes" in imported.stdout
    assert "votes: 3" in run_cli("stats").stdout
    out = tmp_path / "out"
    for args in [("hf", str(out / "ds")), ("parquet", str(out / "votes.parquet")), ("trl", str(out / "trl")),
                 ("editreward", str(out / "er.json"), "--images-dir", str(out / "images"))]:
        result = run_cli("export", *args)
        assert result.returncode == 0, result.stderr
        assert "exported 3 votes" in result.stdout
    assert len(json.loads((out / "er.json").read_text())) == 3
    again = run_cli("import", "hf", str(out / "votes.parquet"))
    assert again.returncode == 0, again.stderr
    assert "0 new votes (3 already present)" in again.stdout
    assert_clean_error(run_cli("export", "hf", str(out / "ds")), "already exists")


def test_folder_import(run_cli, tmp_path):
    from tests.storage.test_interchange import write_folder

    result = run_cli("import", "folder", str(write_folder(tmp_path / "folder")))
    assert result.returncode == 0, result.stderr
    assert "2 new tasks, 6 new candidates, 2 new votes" in result.stdout


def test_bad_file_exits_2_and_changes_nothing(run_cli, tmp_path, session):
    records = editreward_records()
    json_path, images_root = write_editreward(tmp_path, records)
    records[2]["tie_case"] = "yes"
    json_path.write_text(json.dumps(records))
    before = row_counts(session)
    session.rollback()  # SQLite: a reading session holds the write lock (BEGIN IMMEDIATE)
    result = run_cli("import", "editreward", str(json_path), "--images-root", str(images_root))
    assert_clean_error(result, "train.json row 3: 'tie_case' must be true/false or 0/1")
    assert row_counts(session) == before


def test_missing_file_exits_2(run_cli, tmp_path):
    result = run_cli("import", "editreward", str(tmp_path / "nope.json"), "--images-root", str(tmp_path))
    assert_clean_error(result, "nope.json does not exist")
    assert_clean_error(run_cli("import", "hf", str(tmp_path / "nope")), "is neither a datasets")


def test_unreachable_database_exits_2(run_cli):
    result = run_cli("stats", "--database", "postgresql+psycopg://nobody@127.0.0.1:1/none", database=False)
    assert_clean_error(result, "cannot use the database")


def test_demo(run_cli):
    result = run_cli("demo", "--tasks", "2", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "tasks_created: 2" in result.stdout


# --- the password prompt, in process (getpass needs a terminal) ---------------------------------------------


@pytest.fixture
def interactive(monkeypatch, db_url, settings):
    """Run `cli.main` in process as if in a terminal, answering the password prompts from a list."""
    monkeypatch.delenv("JRM_USER_PASSWORD", raising=False)
    monkeypatch.setenv("JRM_DATA_DIR", str(settings.data_dir))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)

    def run(answers: list[str], *args: str) -> int:
        replies = iter(answers)
        monkeypatch.setattr(cli.getpass, "getpass", lambda prompt="": next(replies))
        return cli.main([*args, "--database", db_url])

    return run


def test_password_prompt(interactive, session, capsys):
    assert interactive(["", ""], "users", "add", "eve") == 2
    assert "password is empty" in capsys.readouterr().err
    assert interactive([PASSWORD, PASSWORD + "x"], "users", "add", "eve") == 2
    assert "differ" in capsys.readouterr().err
    assert get_user_by_name(session, name="eve") is None
    session.rollback()  # SQLite: a reading session holds the write lock (BEGIN IMMEDIATE)
    assert interactive([PASSWORD, PASSWORD], "users", "add", "eve", "--role", "researcher") == 0
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err
    assert authenticate(session, name="eve", password=PASSWORD).role == "researcher"
