"""trainer.data: snapshots, the task-level held-out split, orientation of votes, the pair collator."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from storage.db import transaction
from storage.errors import InvalidInput
from storage.images import store_pil_image
from storage.repository import add_candidate, create_task, record_vote
from tests.trainer.conftest import picture
from trainer.data import (
    HELDOUT,
    HELDOUT_FRACTION,
    SNAPSHOT_META,
    TRAIN,
    ImageCache,
    PairCollator,
    PairDataset,
    chosen_side,
    eval_pairs,
    load_snapshot,
    make_snapshot,
    neutral_rationale,
    rows_fingerprint,
    snapshot_votes,
    split_of,
    task_key,
    vote_rows,
)
from trainer.losses import IGNORE_INDEX
from trainer.prompting import build_example

VOTES = [  # (choice, rationale) on one task's three candidates
    ("left", "Left made the ball red; right made no visible change."),
    ("right", "Right made it red as asked."),
    ("tie", "They look about the same to me."),
    ("both_bad", "Neither did the edit."),
    ("left", None),
]


def add_task(session, settings, seed: int, instruction: str = "make the ball red", n_candidates: int = 3):
    """A task with `n_candidates` candidates of generated pictures; returns (task id, candidate ids)."""
    source = store_pil_image(session, image=picture(seed), settings=settings)
    task = create_task(session, source_image_id=source.id, instruction=instruction, settings=settings)
    ids = []
    for i in range(n_candidates):
        image = store_pil_image(session, image=picture(seed * 10 + i + 1, (80, 96)), settings=settings)
        extra = {"flaw": "none" if i == 0 else "no_op", "quality": 1.0 if i == 0 else 0.0}
        ids.append(add_candidate(session, task_id=task.id, image_id=image.id, generator=f"gen-{i}", extra=extra).id)
    return task.id, ids


def add_votes(session, settings, task_id: int, candidates: list[int], votes=VOTES, prefix: str = "v") -> None:
    """Anonymous votes (imported style) cycling over the task's candidate pairs."""
    pairs = [(candidates[0], candidates[1]), (candidates[2], candidates[0]), (candidates[1], candidates[2])]
    for i, (choice, rationale) in enumerate(votes):
        left, right = pairs[i % len(pairs)]
        record_vote(
            session,
            task_id=task_id,
            left_candidate_id=left,
            right_candidate_id=right,
            choice=choice,
            rationale=rationale,
            client_submission_id=f"{prefix}-{task_id}-{i}",
            settings=settings,
        )


@pytest.fixture
def store(factory, settings):
    """Twelve tasks with five votes each (every choice, one vote without a rationale)."""
    with transaction(factory) as session:
        for seed in range(12):
            task_id, candidates = add_task(session, settings, seed, instruction=f"make the ball red, take {seed}")
            add_votes(session, settings, task_id, candidates)
    return factory


# --- the split -------------------------------------------------------------------------------------------------


def test_task_key_is_the_content_hash():
    expected = hashlib.sha256(b"abc\nmake it red").hexdigest()
    assert task_key("abc", "make it red") == expected
    assert task_key("abc", "make it blue") != expected


def test_split_fraction_and_stability():
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    heldout = [split_of(k) == HELDOUT for k in keys]
    assert abs(sum(heldout) / len(keys) - HELDOUT_FRACTION) < 0.01
    assert heldout == [split_of(k) == HELDOUT for k in keys]  # a pure function of the key
    # A larger fraction only moves tasks into the held-out split, never out of it.
    assert all(split_of(k, 0.3) == HELDOUT for k, h in zip(keys, heldout, strict=True) if h)


def test_split_is_by_task(store, settings):
    with store() as session:
        rows = vote_rows(session, settings=settings)
    assert len(rows) == 60
    by_task: dict[int, set[str]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], set()).add(row["split"])
        assert row["task_key"] == task_key(row["source_sha256"], row["instruction"])
        assert row["split"] == split_of(row["task_key"])
    assert all(len(splits) == 1 for splits in by_task.values())  # no task in both splits


# --- snapshots -------------------------------------------------------------------------------------------------


def test_snapshot_rows_keep_every_vote(store, settings, tmp_path):
    with store() as session:
        snapshot = snapshot_votes(session, settings=settings, folder=tmp_path / "snap")
    rows = snapshot.dataset.to_list()
    assert [r["vote_id"] for r in rows] == sorted(r["vote_id"] for r in rows)
    assert snapshot.watermark == rows[-1]["vote_id"]
    choices = [r["choice"] for r in rows]
    assert {c: choices.count(c) for c in set(choices)} == {"left": 24, "right": 12, "tie": 12, "both_bad": 12}
    assert sum(r["rationale"] is None for r in rows) == 12  # kept, not dropped
    first = rows[0]
    assert json.loads(first["left_extra"]) == {"flaw": "none", "quality": 1.0}
    for key in ("source", "left", "right"):
        path = first[f"{key}_path"]
        assert path.startswith(str(settings.blob_dir.resolve())) and first[f"{key}_sha256"] in path
    counts = snapshot.counts()
    assert counts["train_votes"] + counts["heldout_votes"] == 60
    assert counts["train_tasks"] + counts["heldout_tasks"] == 12


def test_snapshot_round_trip_and_fingerprint(store, settings, tmp_path):
    with store() as session:
        saved = snapshot_votes(session, settings=settings, folder=tmp_path / "a")
        again = make_snapshot(vote_rows(session, settings=settings))
    loaded = load_snapshot(tmp_path / "a")
    assert loaded.dataset.to_list() == saved.dataset.to_list()
    assert loaded.fingerprint == saved.fingerprint == again.fingerprint  # same votes → same fingerprint
    assert loaded.watermark == saved.watermark
    assert [r["vote_id"] for r in loaded.split(TRAIN)] + [r["vote_id"] for r in loaded.split(HELDOUT)] != []
    moved = [{**row, "source_path": "/elsewhere/x.png"} for row in saved.dataset.to_list()]
    assert rows_fingerprint(moved) == saved.fingerprint  # paths are not content

    with transaction(store) as session:
        task_id, candidates = add_task(session, settings, 99)
        add_votes(session, settings, task_id, candidates, votes=[("left", "Left is right.")], prefix="new")
    with store() as session:
        grown = make_snapshot(vote_rows(session, settings=settings))
    assert grown.fingerprint != saved.fingerprint
    assert grown.watermark > saved.watermark
    assert load_snapshot(tmp_path / "a").fingerprint == saved.fingerprint  # the saved one is frozen


def test_modified_or_incomplete_snapshot_is_refused(store, settings, tmp_path):
    with store() as session:
        snapshot_votes(session, settings=settings, folder=tmp_path / "snap")
        with pytest.raises(InvalidInput, match="already holds a snapshot"):
            snapshot_votes(session, settings=settings, folder=tmp_path / "snap")
    meta = json.loads((tmp_path / "snap" / SNAPSHOT_META).read_text())
    meta["fingerprint"] = "0" * 64
    (tmp_path / "snap" / SNAPSHOT_META).write_text(json.dumps(meta))
    with pytest.raises(InvalidInput, match="fingerprint"):
        load_snapshot(tmp_path / "snap")
    with pytest.raises(InvalidInput, match="not a complete training snapshot"):
        load_snapshot(tmp_path / "missing")


def test_empty_store_has_nothing_to_snapshot(factory, settings, tmp_path):
    with factory() as session:
        empty = make_snapshot(vote_rows(session, settings=settings))
        assert len(empty.dataset) == 0 and empty.watermark == 0 and len(empty.split(TRAIN)) == 0
        with pytest.raises(InvalidInput, match="no votes to snapshot"):
            snapshot_votes(session, settings=settings, folder=tmp_path / "snap")
    assert not (tmp_path / "snap").exists()


# --- orientation, rationales, examples and the collator --------------------------------------------------------


def test_chosen_side():
    assert [chosen_side(c) for c in ("left", "right", "tie", "both_bad")] == ["left", "right", "left", "left"]
    with pytest.raises(ValueError, match="unknown vote choice"):
        chosen_side("maybe")


@pytest.mark.parametrize(
    ("text", "side", "expected"),
    [
        (
            "Left mirrored it left to right; right made no change.",
            "left",
            "This edit mirrored it left to right; the other edit made no change.",
        ),
        (
            "Left mirrored it left to right; right made no change.",
            "right",
            "The other edit mirrored it left to right; this edit made no change.",
        ),
        (
            "The left one added a square in the top left corner.",
            "right",
            "The other edit added a square in the top left corner.",
        ),
        (
            'Neither got "move it left" right: left did the right thing badly.',
            "left",
            'Neither got "move it left" right: this edit did the right thing badly.',
        ),
        ("I slightly prefer right.", "right", "I slightly prefer this edit."),
    ],
)
def test_neutral_rationale(text, side, expected):
    assert neutral_rationale(text, side) == expected


def _rows(store, settings):
    with store() as session:
        return vote_rows(session, settings=settings)


def test_pair_dataset_orients_votes(store, settings, make_model):
    model = make_model("tiny")
    rows = _rows(store, settings)[:5]  # one of each VOTES entry, in order
    cache = ImageCache()
    dataset = PairDataset(rows, model.processor, cache=cache)
    for index, (row, (choice, rationale)) in enumerate(zip(rows, VOTES, strict=True)):
        example = dataset[index]
        winner = chosen_side(choice)
        loser = "right" if winner == "left" else "left"
        assert example.is_tie == (choice in ("tie", "both_bad"))
        assert example.rejected.n_rationale_tokens == 0  # the rationale conditions the chosen sequence only
        assert (example.chosen.n_rationale_tokens > 0) == (rationale is not None)
        for sequence, side in ((example.chosen, winner), (example.rejected, loser)):
            expected = build_example(
                model.processor,
                source=cache.get(row["source_path"]),
                edited=cache.get(row[f"{side}_path"]),
                instruction=row["instruction"],
            )
            assert torch.equal(sequence.image_inputs["pixel_values"], expected.image_inputs["pixel_values"])
            assert torch.equal(sequence.input_ids[: expected.input_ids.shape[0]], expected.input_ids)
    assert len(cache) == 4  # one source and three candidates, decoded once each


def test_collator_puts_chosen_first(store, settings, make_model):
    model = make_model("tiny")
    rows = _rows(store, settings)[:5]
    dataset = PairDataset(rows, model.processor)
    pairs = PairCollator(model.processor)([dataset[i] for i in range(5)])
    batch = pairs.batch
    assert len(pairs) == 5 and pairs.is_tie.tolist() == [False, False, True, True, False]
    assert batch.input_ids.shape[0] == 10 and batch.score_index.shape == (10,)
    assert batch.extras["pixel_values"].shape[0] == 20  # two images per sequence
    has_labels = (batch.labels != IGNORE_INDEX).any(dim=1).tolist()
    assert has_labels == [True, True, True, True, False] + [False] * 5  # rationale labels on chosen only
    out = model(pairs.batch, with_lm=True)
    assert out.rewards.shape == (10,) and out.lm_loss is not None


def test_image_cache_is_lru(tmp_path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        picture(i).save(paths[-1])
    cache = ImageCache(capacity=2)
    first = cache.get(paths[0])
    assert cache.get(paths[0]) is first
    cache.get(paths[1])
    cache.get(paths[0])  # 0 is now the most recent: 1 goes next
    cache.get(paths[2])
    assert len(cache) == 2 and cache.get(paths[0]) is first
    with pytest.raises(InvalidInput, match="cannot be read"):
        cache.get(str(tmp_path / "missing.png"))


def test_eval_pairs_carry_the_vote(store, settings):
    rows = _rows(store, settings)[:4]
    pairs = eval_pairs(rows)
    assert [p.label for p in pairs] == ["left", "right", "tie", "both_bad"]
    assert pairs[0].left_candidate_id == rows[0]["left_candidate_id"]
    assert pairs[0].left_extra == json.loads(rows[0]["left_extra"])
    assert pairs[0].task_key == rows[0]["task_key"] and pairs[0].source.mode == "RGB"
    assert pairs[0].source is pairs[1].source  # decoded once through the cache
