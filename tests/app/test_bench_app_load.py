"""bench/app_load.py against the served app: a short run of a few annotators, double submissions included."""

from __future__ import annotations

import argparse
import os
from collections import Counter

import pytest

from bench import app_load


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_short_back_to_back_run_stores_every_vote_once_and_answers_each_double_already_saved(backend):
    url = os.environ.get("JRM_TEST_POSTGRES_URL")
    if backend == "postgresql" and not url:
        pytest.skip("PostgreSQL tests need JRM_TEST_POSTGRES_URL (CI sets it)")
    args = argparse.Namespace(postgres_url=url or "", seconds=4.0, tasks=6, double_every=3)
    result = app_load.run_case("this", app_load.REPO, app_load.Case(backend, 3, 0.0), args)
    errors = sum((a.errors for a in result.annotators), Counter())
    assert not errors, errors
    assert result.check["stored"] > 0 and result.intact, result.check
    doubles = sum(a.doubles for a in result.annotators)
    assert doubles > 0 and sum(a.already for a in result.annotators) == doubles
    assert set(result.latencies) >= {"next_pair", "submit_vote", app_load.DOUBLE, app_load.FIRST}
