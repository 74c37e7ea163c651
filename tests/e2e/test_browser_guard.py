"""In CI a missing browser fails the browser tests instead of skipping them (a laptop without one skips)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_browser_tests(**env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "JRM_TEST_REQUIRE_CHROMIUM"}
    environ.update({"JRM_TEST_CHROMIUM": "/nonexistent/chromium", **env})
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/e2e/test_browser.py"]
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_missing_browser_fails_where_it_is_required_and_skips_elsewhere():
    required = _run_browser_tests(JRM_TEST_REQUIRE_CHROMIUM="1")
    assert required.returncode == 1, required.stdout
    assert "JRM_TEST_REQUIRE_CHROMIUM is set but browser tests need" in required.stdout
    laptop = _run_browser_tests()
    assert laptop.returncode == 0, laptop.stdout
    assert " skipped" in laptop.stdout and " failed" not in laptop.stdout
