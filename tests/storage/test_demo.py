"""The demo dataset: the pure generator (edits, phrasings, flaws, votes) and `build_demo` into the store."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.db import session_factory, transaction
from storage.demo import build_demo, ensure_demo_data
from storage.demo_edits import GENERATOR_PROFILES, MIN_CANDIDATE_DIFF, MIN_EDIT_DIFF, DemoTask, demo_task
from storage.demo_filters import COLOURS, shape_box
from storage.demo_kinds import EDIT_KINDS, EditSpec, apply_edit, phrase_instruction
from storage.demo_photos import available_photos, mean_abs_diff, sample_source
from storage.demo_visible import visible_changes
from storage.demo_votes import MAX_SEEN, demo_votes, intended_choice, sim_annotators, write_rationale
from storage.errors import InvalidInput
from storage.images import image_path
from storage.models import Pair, Task, User, Vote
from storage.settings import load_settings
from storage.stats import dataset_stats
from tests.conftest import make_test_engine


@pytest.fixture(scope="module")
def source() -> Image.Image:
    """A colourful, detailed 128 px picture (the astronaut), the same every time."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((128, 128), Image.Resampling.LANCZOS)


def _px(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _laplacian_energy(image: Image.Image) -> float:
    gray = _px(image).mean(axis=-1)
    lap = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return float(np.abs(lap).mean())


@pytest.fixture(scope="module")
def tasks() -> list[DemoTask]:
    return [demo_task(5, i) for i in range(60)]


# ------------------------------------------------------------------------------------------- photos


def test_photos_load_offline_as_square_rgb_crops():
    assert len(available_photos()) >= 10
    assert "grace_hopper" in available_photos()
    name, crop = sample_source(random.Random(0), size=96)
    assert name in available_photos()
    assert crop.mode == "RGB" and crop.size == (96, 96)


def test_random_crops_give_many_distinct_sources():
    sources = {sample_source(random.Random(i))[1].tobytes() for i in range(40)}
    assert len(sources) == 40


# -------------------------------------------------------------------------------------------- edits


def test_catalogue_has_enough_kinds_and_phrasings():
    assert len(EDIT_KINDS) >= 12
    rng = random.Random(0)
    for kind in EDIT_KINDS.values():
        assert len(set(kind.phrasings)) >= 3, kind.name
        params = kind.sample_params(rng)
        for phrasing in kind.phrasings:
            assert "{" not in phrasing.format(**params)  # every placeholder is a parameter
        assert kind.describe(params)
        if kind.partial_strength is not None:
            assert kind.describe(params, kind.partial_strength) != kind.describe(params)


def test_flips_and_rotations_match_numpy(source):
    pixels = _px(source)
    assert np.array_equal(_px(apply_edit("flip_horizontal", source)), np.fliplr(pixels))
    assert np.array_equal(_px(apply_edit("flip_vertical", source)), np.flipud(pixels))
    assert np.array_equal(_px(apply_edit("rotate", source, {"direction": "clockwise"})), np.rot90(pixels, k=-1))
    assert np.array_equal(_px(apply_edit("rotate", source, {"direction": "counterclockwise"})), np.rot90(pixels, k=1))


def test_colour_edits(source):
    gray = _px(apply_edit("grayscale", source))
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    assert np.array_equal(_px(apply_edit("invert", source)), 255 - _px(source))
    sepia = _px(apply_edit("sepia", source)).reshape(-1, 3).mean(axis=0)
    assert sepia[0] > sepia[1] > sepia[2]
    for colour, rgb in COLOURS.items():
        tinted = _px(apply_edit("tint", source, {"colour": colour})).reshape(-1, 3).mean(axis=0)
        assert int(np.argmax(tinted)) == int(np.argmax(rgb)), colour
    levels = _px(apply_edit("posterize", source))
    assert all(len(np.unique(levels[..., c])) <= 4 for c in range(3))


def test_light_edits(source):
    mean, std = _px(source).mean(), _px(source).std()
    assert _px(apply_edit("brighten", source)).mean() > mean + 20
    assert _px(apply_edit("darken", source)).mean() < mean - 20
    assert _px(apply_edit("contrast", source)).std() > std * 1.3
    assert _px(apply_edit("lower_contrast", source)).std() < std * 0.6


def test_detail_edits(source):
    energy = _laplacian_energy(source)
    assert _laplacian_energy(apply_edit("blur", source)) < energy * 0.5
    assert _laplacian_energy(apply_edit("sharpen", source)) > energy * 1.5
    blocks = _px(apply_edit("pixelate", source))
    assert np.array_equal(blocks[:8, :8], np.broadcast_to(blocks[0, 0], (8, 8, 3)))


def test_zoom_enlarges_the_centre(source):
    zoomed = apply_edit("zoom", source)
    expected = source.crop((32, 32, 96, 96)).resize((128, 128), Image.Resampling.LANCZOS)
    assert mean_abs_diff(zoomed, expected) < 3
    assert mean_abs_diff(zoomed, source) > 10


def test_border_and_shape_paint_the_named_colour_where_asked(source):
    framed = _px(apply_edit("border", source, {"colour": "blue"}))
    for edge in (framed[0], framed[-1], framed[:, 0], framed[:, -1]):
        assert (edge == COLOURS["blue"]).all()
    params = {"shape": "square", "colour": "red", "corner": "bottom right"}
    drawn = _px(apply_edit("shape", source, params))
    left, top, right, bottom = shape_box(source.size, "bottom right", 1.0)
    assert left > 64 and top > 64
    assert (drawn[top : bottom + 1, left : right + 1] == COLOURS["red"]).all()
    assert np.array_equal(drawn[:64, :64], _px(source)[:64, :64])


@pytest.mark.parametrize("kind", sorted(EDIT_KINDS))
def test_every_edit_is_visible_and_its_weak_version_weaker(kind, source):
    spec = EditSpec.of(kind, EDIT_KINDS[kind].sample_params(random.Random(1)))
    full = mean_abs_diff(spec.apply(source), source)
    assert full >= MIN_EDIT_DIFF
    partial = EDIT_KINDS[kind].partial_strength
    if partial is not None:
        weak = mean_abs_diff(replace(spec, strength=partial).apply(source), source)
        assert 0 < weak < full


def test_phrasing_fills_parameters():
    spec = EditSpec.of("tint", {"colour": "purple"})
    assert all("purple" in phrase_instruction(spec, random.Random(i)) for i in range(10))


# --------------------------------------------------------------------------------------------- tasks


def test_task_has_one_correct_edit_and_distinct_flawed_ones(tasks):
    for task in tasks:
        assert 2 <= len(task.candidates) <= 4
        correct = [c for c in task.candidates if c.flaw == "none"]
        assert len(correct) == 1
        assert correct[0].image.tobytes() == task.edit.apply(task.source).tobytes()
        assert mean_abs_diff(correct[0].image, task.source) >= MIN_EDIT_DIFF
        for a, b in _pairs(task.candidates):
            assert mean_abs_diff(a.image, b.image) >= MIN_CANDIDATE_DIFF
        assert len({c.generator for c in task.candidates}) == len(task.candidates)
        assert task.category == task.edit.kind and task.instruction


def _pairs(items):
    return [(a, b) for i, a in enumerate(items) for b in items[i + 1 :]]


def test_flaws_do_what_they_say(tasks):
    seen = Counter()
    for task in tasks:
        for candidate in task.candidates:
            seen[candidate.flaw] += 1
            if candidate.flaw == "no_op":
                assert mean_abs_diff(candidate.image, task.source) < 3  # the source, maybe re-encoded
                if not candidate.reencoded:
                    assert candidate.image.tobytes() == task.source.tobytes()
            elif candidate.flaw == "partial_strength":
                assert candidate.edits[0].kind == task.edit.kind and candidate.edits[0].strength < 1
                assert mean_abs_diff(candidate.image, task.source) > 0
            elif candidate.flaw == "extra_change":
                assert candidate.edits[0] == task.edit and len(candidate.edits) == 2
                assert EDIT_KINDS[candidate.edits[1].kind].family != EDIT_KINDS[task.edit.kind].family
            elif candidate.flaw == "wrong_op":
                assert EDIT_KINDS[candidate.edits[0].kind].family != EDIT_KINDS[task.edit.kind].family
            elif candidate.flaw == "wrong_param":
                assert candidate.edits[0] != task.edit
            assert candidate.extra()["flaw"] == candidate.flaw
    assert set(seen) == {"none", "no_op", "partial_strength", "extra_change", "wrong_op", "wrong_param"}


def test_correct_edit_position_and_generator_do_not_give_it_away(tasks):
    positions = Counter(next(i for i, c in enumerate(t.candidates) if c.flaw == "none") for t in tasks)
    assert len(positions) >= 3
    flaws_by_generator: dict[str, set[str]] = {}
    for task in tasks:
        for candidate in task.candidates:
            flaws_by_generator.setdefault(candidate.generator, set()).add(candidate.flaw)
    assert set(flaws_by_generator) <= set(GENERATOR_PROFILES)
    assert sum(len(flaws) >= 2 for flaws in flaws_by_generator.values()) >= 5  # nobody is always right or wrong


def test_leaderboard_order_follows_generator_profiles():
    quality: dict[str, list[float]] = {}
    for i in range(150):
        for candidate in demo_task(9, i).candidates:
            quality.setdefault(candidate.generator, []).append(candidate.quality)
    mean = {g: sum(q) / len(q) for g, q in quality.items()}
    assert mean["magicbrush-sim"] > mean["anyedit-sim"] > mean["noop-baseline"]


def test_grayscale_source_never_gets_colour_only_edits():
    for i in range(80):
        task = demo_task(2, i)
        if EDIT_KINDS[task.edit.kind].needs_colour:
            assert task.photo not in ("camera", "coins", "moon")


def test_same_seed_same_task_other_seed_other_task():
    a, b, c = demo_task(3, 4), demo_task(3, 4), demo_task(4, 4)
    assert a.instruction == b.instruction and a.edit == b.edit
    assert [x.image.tobytes() for x in a.candidates] == [x.image.tobytes() for x in b.candidates]
    assert [x.generator for x in a.candidates] == [x.generator for x in b.candidates]
    assert demo_votes(a) == demo_votes(b)
    assert (a.source.tobytes(), a.instruction) != (c.source.tobytes(), c.instruction)


def test_working_size_is_configurable():
    task = demo_task(0, 0, size=64)
    assert task.source.size == (64, 64) and all(c.image.size == (64, 64) for c in task.candidates)


# --------------------------------------------------------------------------------------------- votes


def test_votes_cover_pairs_with_distinct_annotators(tasks):
    full = 0
    for task in tasks:
        votes = demo_votes(task, overlap_target=2)
        by_pair = Counter(v.pair_index for v in votes)
        pairs = len(task.candidates) * (len(task.candidates) - 1) // 2
        assert all(n <= 2 for n in by_pair.values())
        full += len(by_pair) == pairs and set(by_pair.values()) == {2}
        for pair in by_pair:
            names = [v.annotator for v in votes if v.pair_index == pair]
            assert len(set(names)) == len(names)
        for vote in votes:
            assert {vote.left, vote.right} <= set(range(len(task.candidates))) and vote.left != vote.right
    assert full >= len(tasks) * 0.75  # most tasks filled to the overlap target, a few left open for people


def test_vote_mix_is_realistic(tasks):
    votes = [v for task in tasks for v in demo_votes(task)]
    choices = Counter(v.choice for v in votes)
    assert set(choices) == {"left", "right", "tie", "both_bad"}
    assert 0.4 < choices["left"] / (choices["left"] + choices["right"]) < 0.6
    assert 0.03 < sum(v.noisy for v in votes) / len(votes) < 0.15
    assert 0.04 < sum(v.rationale is None for v in votes) / len(votes) < 0.18
    assert len({v.client_submission_id for v in votes}) == len(votes)


def test_careful_votes_prefer_the_better_candidate(tasks):
    for task in tasks:
        for vote in demo_votes(task):
            left, right = task.candidates[vote.left], task.candidates[vote.right]
            if vote.noisy or vote.choice not in ("left", "right"):
                continue
            winner, loser = (left, right) if vote.choice == "left" else (right, left)
            assert winner.quality >= loser.quality


def test_rationales_name_what_each_side_did_and_what_visibly_changed(tasks):
    for task in tasks:
        for vote in demo_votes(task):
            if vote.rationale is None or vote.noisy:
                continue
            for shown in (task.candidates[vote.left], task.candidates[vote.right]):
                assert shown.describe() in vote.rationale
                assert "; ".join(visible_changes(task.source, shown.image)[:MAX_SEEN]) in vote.rationale
    texts = {v.rationale for task in tasks for v in demo_votes(task) if v.rationale}
    assert len(texts) > 100


def test_rationale_for_a_mirror_against_a_no_op_says_what_each_looks_like():
    task = next(t for t in (demo_task(5, i) for i in range(200)) if t.edit.kind == "flip_horizontal")
    correct = next(c for c in task.candidates if c.flaw == "none")
    unchanged = replace(correct, flaw="no_op", edits=(), image=task.source.copy())
    rationales = {
        write_rationale(
            "left",
            noisy=False,
            left=correct,
            right=unchanged,
            instruction=task.instruction,
            source=task.source,
            rng=random.Random(seed),
        )
        for seed in range(40)
    }
    assert (
        "Left mirrored it left to right as asked (the picture is reversed); right made no visible change "
        "(almost nothing changed)." in rationales
    )
    assert all("the picture is reversed" in r and "almost nothing changed" in r for r in rationales)


# sha256 of the first 20 tasks' votes of seed 5 without their rationale text, as drawn before rationales described
# the pixels: repr([(pair_index, annotator, left, right, choice, noisy, rationale is None, time_spent_ms), ...]).
VOTES_SEED_5 = "bdda8f1337b5e2ebfb85b28c8b6f714af1bff88d1c392d189d5935f9b89ed152"


def test_visible_changes_leave_the_votes_and_the_slips_rationales_as_they_were(tasks):
    # Rationales draw one template from the vote's rng as before, so every later draw (times, slips) is unchanged.
    votes = [v for task in tasks[:20] for v in demo_votes(task)]
    key = [
        (v.pair_index, v.annotator, v.left, v.right, v.choice, v.noisy, v.rationale is None, v.time_spent_ms)
        for v in votes
    ]
    assert hashlib.sha256(repr(key).encode()).hexdigest() == VOTES_SEED_5
    vague = [v.rationale for v in votes if v.noisy and v.rationale]
    assert vague and not any("(" in r or "changed" in r for r in vague)  # a slip's rationale names no change


def test_intended_choice_rules():
    rng = random.Random(0)
    assert {intended_choice(1.0, 0.0, rng) for _ in range(50)} == {"left"}
    assert {intended_choice(0.25, 1.0, rng) for _ in range(50)} == {"right"}
    assert "both_bad" in {intended_choice(0.1, 0.0, rng) for _ in range(50)}
    assert "tie" in {intended_choice(0.6, 0.5, rng) for _ in range(50)}


def test_simulated_annotators_average_eight_percent_error():
    annotators = sim_annotators(5)
    assert [a.name for a in annotators] == [f"sim-annotator-{i}" for i in range(1, 6)]
    assert sum(a.error_rate for a in annotators) / 5 == pytest.approx(0.08)
    with pytest.raises(ValueError, match="overlap_target"):
        demo_votes(demo_task(0, 0), overlap_target=3, annotators=annotators[:2])


# ------------------------------------------------------------------------------------------- the store


def _store_snapshot(session: Session) -> dict[str, list]:
    """Everything the demo wrote that must not depend on the machine or the backend (ids excluded)."""
    tasks = session.scalars(select(Task).order_by(Task.id)).all()
    votes = session.scalars(select(Vote).order_by(Vote.client_submission_id)).all()
    candidates = {c.id: c for t in tasks for c in t.candidates}
    return {
        "tasks": [(t.external_id, t.instruction, t.category, t.source_image.sha256) for t in tasks],
        "candidates": [[(c.generator, c.image.sha256, c.extra["flaw"]) for c in t.candidates] for t in tasks],
        "votes": [
            (
                v.client_submission_id,
                candidates[v.left_candidate_id].generator,
                candidates[v.right_candidate_id].generator,
                v.choice,
                v.rationale,
                v.time_spent_ms,
            )
            for v in votes
        ],
    }


def test_build_demo_writes_tasks_candidates_and_votes(session, settings):
    summary = build_demo(session, tasks=12, seed=1, settings=settings)
    assert (summary.tasks, summary.tasks_created) == (12, 12)
    assert summary.votes_created == summary.votes > 0 and summary.annotators == 5
    tasks = session.scalars(select(Task).where(Task.origin == "demo")).all()
    assert len(tasks) == 12 and all(t.category in EDIT_KINDS for t in tasks)
    for task in tasks:
        assert 2 <= len(task.candidates) <= 4
        assert sum(c.extra["flaw"] == "none" for c in task.candidates) == 1
        for candidate in task.candidates:
            assert image_path(settings, candidate.image).is_file()
            assert (candidate.image.width, candidate.image.height) == (128, 128)
    votes = session.scalars(select(Vote)).all()
    assert len(votes) == summary.votes and all(v.origin == "demo" for v in votes)
    assert sum(v.rationale is not None for v in votes) >= 0.7 * len(votes)
    annotators = session.scalars(select(User).where(User.name.like("sim-annotator-%"))).all()
    assert len(annotators) == 5 and all(u.role == "annotator" and u.password_hash is None for u in annotators)
    pairs = session.scalars(select(Pair)).all()
    assert sum(p.vote_count for p in pairs) == len(votes)
    assert all(p.vote_count <= settings.overlap_target for p in pairs)


def test_build_demo_twice_is_idempotent(factory, settings):
    with transaction(factory) as session:
        first = build_demo(session, tasks=5, seed=2, settings=settings)
    with transaction(factory) as session:
        before = _store_snapshot(session)
        again = build_demo(session, tasks=5, seed=2, settings=settings)
        assert _store_snapshot(session) == before
    assert (again.tasks_created, again.candidates_created, again.votes_created) == (0, 0, 0)
    assert (again.tasks, again.candidates, again.votes) == (first.tasks, first.candidates, first.votes)


def _fresh_store_snapshot(tmp_path, name: str, *, tasks: int, seed: int) -> dict[str, list]:
    settings = load_settings(environ={}, data_dir=tmp_path / name)
    engine, teardown = make_test_engine("sqlite", settings)
    try:
        with transaction(session_factory(engine)) as session:
            build_demo(session, tasks=tasks, seed=seed, settings=settings)
            return _store_snapshot(session)
    finally:
        teardown()


def test_same_seed_gives_the_same_store_another_seed_another(tmp_path):
    first = _fresh_store_snapshot(tmp_path, "a", tasks=6, seed=3)
    second = _fresh_store_snapshot(tmp_path, "b", tasks=6, seed=3)
    other = _fresh_store_snapshot(tmp_path, "c", tasks=6, seed=4)
    assert first == second
    assert first["tasks"] != other["tasks"] and first["votes"] != other["votes"]


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_larger_demo_has_every_choice_and_extends_a_smaller_one(session, settings):
    build_demo(session, tasks=10, seed=0, settings=settings)
    summary = build_demo(session, tasks=60, seed=0, settings=settings)
    assert (summary.tasks, summary.tasks_created) == (60, 50)
    stats = dataset_stats(session)
    assert set(stats.votes_by_choice) == {"left", "right", "tie", "both_bad"}
    assert all(n > 0 for n in stats.votes_by_choice.values())
    assert 0.8 < stats.rationale_coverage < 0.97
    assert stats.pairs_at_target < stats.pairs  # some pairs are left open for people to vote on
    assert len(set(session.scalars(select(Task.category)))) >= 12


def test_ensure_demo_data_seeds_only_an_empty_store(factory, settings):
    summary = ensure_demo_data(factory, settings=settings, tasks=3, seed=0)
    assert summary is not None and summary.tasks_created == 3
    assert ensure_demo_data(factory, settings=settings, tasks=3, seed=1) is None
    with factory() as session:
        assert session.scalar(select(func.count(Task.id))) == 3


def test_build_demo_refuses_bad_arguments(session, settings):
    for tasks in (-1, 1.5, True):
        with pytest.raises(InvalidInput, match="tasks"):
            build_demo(session, tasks=tasks, seed=0, settings=settings)
    with pytest.raises(InvalidInput, match="seed"):
        build_demo(session, tasks=1, seed="x", settings=settings)
