"""bench/reward_server.py: a short run serves the same scores as the in-process scorer and prints one row per cell."""

from __future__ import annotations

import pytest

from bench import reward_server


def test_percentile_is_the_nearest_rank():
    assert reward_server.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert reward_server.percentile([4.0, 1.0, 3.0, 2.0], 95) == 4.0
    assert reward_server.percentile([7.0], 95) == 7.0


@pytest.mark.slow
def test_a_quick_run_scores_alike_and_reports_both_variants(capsys):
    rows = reward_server.main(["--quick", "--backbone", "tiny"])  # 1 and 4 clients, 1 s per cell
    output = capsys.readouterr().out
    assert "largest |server − in-process| score over the 16 items: 0.00e+00" in output
    assert [(row["clients"], row["variant"]) for row in rows] == [
        (1, "in-process"),
        (1, "server"),
        (4, "in-process"),
        (4, "server"),
    ]
    assert all(row["rate"] > 0 and row["p95"] >= row["p50"] > 0 for row in rows)
    assert all(row["ratio"] > 0 for row in rows if row["variant"] == "server")
    assert output.count("| server |") == 2
