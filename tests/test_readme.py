from pathlib import Path

from storage.settings import configuration_table

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    missing = [name for name, _, _ in configuration_table() if f"`{name}`" not in README]
    assert missing == []


def test_readme_commands_are_the_ones_ci_runs():
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    test_command = "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && .venv/bin/python -m pytest"
    assert test_command.replace(" -q", "") in README
    assert test_command in ci
