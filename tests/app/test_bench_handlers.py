"""bench/annotate_handlers.py measures this checkout's handlers; its statement counts are the annotate path's budget."""

from __future__ import annotations

import os

import pytest

from bench import annotate_handlers


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_vote_cycle_stays_within_its_statement_budget(backend):
    url = os.environ.get("JRM_TEST_POSTGRES_URL")
    if backend == "postgresql" and not url:
        pytest.skip("PostgreSQL tests need JRM_TEST_POSTGRES_URL (CI sets it)")
    result = annotate_handlers.measure(backend, cycles=8, tasks=4, postgres_url=url or "")
    # load_pair on a held pair: the caller, the held assignment, the pair with its image files (SQLite also counts
    # its BEGIN IMMEDIATE). submit_vote adds the vote, its pair, the counters and the next reservation.
    begin = 1 if backend == "sqlite" else 0
    assert result["load_statements"] == 3 + begin
    assert result["submit_statements"] == 11 + begin
    assert result["load_ms"] > 0 and result["submit_ms"] > 0
