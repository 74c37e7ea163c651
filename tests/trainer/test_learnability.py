"""bench/learnability.py's rows: snapshot format, the product's split, and the label modes (no training)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from bench import learnability
from storage.demo_edits import demo_task
from storage.demo_photos import mean_abs_diff
from storage.demo_votes import demo_votes
from trainer.data import FEATURES, TIE_CHOICES, eval_pairs, make_snapshot, split_of, task_key

TASKS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> learnability.DemoRows:
    return learnability.demo_rows(TASKS, tmp_path_factory.mktemp("learnability"))


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def picture(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def test_rows_are_the_demo_votes_in_snapshot_format(data):
    votes = [vote for i in range(TASKS) for vote in demo_votes(demo_task(0, i))]
    assert [row["choice"] for row in data.rows] == [vote.choice for vote in votes]
    assert [row["rationale"] for row in data.rows] == [vote.rationale for vote in votes]
    assert all(set(row) == set(FEATURES) for row in data.rows)
    assert len(make_snapshot(data.rows).dataset) == len(votes)  # the FEATURES schema accepts them
    assert len(eval_pairs(data.rows)) == len(votes)


def test_split_matches_the_product(data):
    for row in data.rows:
        with open(row["source_path"], "rb") as file:
            source_sha = hashlib.sha256(file.read()).hexdigest()
        assert row["source_sha256"] == source_sha
        assert row["task_key"] == task_key(source_sha, row["instruction"])
        assert row["split"] == split_of(row["task_key"])


def test_brighter_labels_the_brighter_candidate_chosen(data):
    rows = learnability.label_rows(data, "brighter")
    assert rows and all(row["choice"] in ("left", "right") and row["rationale"] is None for row in rows)
    for row in rows:
        loser = "right" if row["choice"] == "left" else "left"
        assert pixels(row[f"{row['choice']}_path"]).mean() > pixels(row[f"{loser}_path"]).mean()
    dropped = len(data.rows) - len(rows)  # pairs of equal brightness (a flip or a rotation of the source)
    assert dropped == sum(
        pixels(row["left_path"]).mean() == pixels(row["right_path"]).mean() for row in data.rows
    )


def test_changed_more_labels_the_larger_change_chosen(data):
    rows = learnability.label_rows(data, "changed-more")
    assert rows and not any(row["choice"] in TIE_CHOICES or row["rationale"] for row in rows)
    for row in rows:
        loser = "right" if row["choice"] == "left" else "left"
        source = picture(row["source_path"])
        changed = {side: mean_abs_diff(picture(row[f"{side}_path"]), source) for side in (row["choice"], loser)}
        assert changed[row["choice"]] > changed[loser]


def test_real_labels_are_the_votes_and_unknown_modes_fail(data):
    assert learnability.label_rows(data, "real") == data.rows
    with pytest.raises(ValueError, match="label mode"):
        learnability.label_rows(data, "darker")
