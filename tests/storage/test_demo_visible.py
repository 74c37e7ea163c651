"""`visible_changes`: what a candidate visibly did, from the pixels alone, checked on known edits."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from storage.demo_edits import DemoTask, demo_task
from storage.demo_kinds import apply_edit
from storage.demo_visible import nearest_colour, visible_changes


@pytest.fixture(scope="module")
def source() -> Image.Image:
    """A colourful, detailed 128 px picture (the astronaut), the same every time."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((128, 128), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def tasks() -> list[DemoTask]:
    return [demo_task(5, i) for i in range(60)]


# --- hand-checkable cases --------------------------------------------------------------------------------------


def test_the_same_picture_or_a_jpeg_round_trip_is_almost_nothing(source):
    assert visible_changes(source, source.copy()) == ["almost nothing changed"]
    nudged = Image.fromarray((np.asarray(source, dtype=np.int16) + 1).clip(0, 255).astype(np.uint8))  # |Δ| = 1
    assert visible_changes(source, nudged) == ["almost nothing changed"]


def test_halving_every_pixel_is_clearly_darker(source):
    halved = Image.fromarray((np.asarray(source) // 2).astype(np.uint8))
    assert visible_changes(source, halved)[0] == "it is clearly darker"


def test_a_red_square_in_the_top_left_is_that_corner(source):
    drawn = source.copy()
    ImageDraw.Draw(drawn).rectangle((6, 6, 40, 40), fill=(220, 30, 30))
    assert visible_changes(source, drawn) == ["only the top left corner changed", "a red patch appeared there"]


def test_numpy_mirror_flip_and_turns_are_named(source):
    pixels = np.asarray(source)
    cases = {
        "the picture is reversed": pixels[:, ::-1],
        "the picture is upside down": pixels[::-1],
        "the picture is turned a quarter turn clockwise": np.rot90(pixels, k=-1),
        "the picture is turned a quarter turn counterclockwise": np.rot90(pixels, k=1),
    }
    for phrase, moved in cases.items():
        assert visible_changes(source, Image.fromarray(np.ascontiguousarray(moved))) == [phrase]


def test_grey_copy_has_lost_its_colour_and_a_negative_swaps_light_and_dark(source):
    assert visible_changes(source, ImageOps.grayscale(source).convert("RGB")) == ["the colour is gone"]
    assert visible_changes(source, ImageOps.invert(source))[0] == "the light and dark are swapped"


def test_nearest_colour_names_only_close_colours():
    assert nearest_colour(np.array([215.0, 40.0, 35.0])) == "red"
    assert nearest_colour(np.array([128.0, 128.0, 128.0])) is None


# --- the demo's edits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "expected"),
    [
        ("darken", {}, "it is clearly darker"),
        ("brighten", {}, "it is clearly brighter"),
        ("grayscale", {}, "the colour is gone"),
        ("flip_horizontal", {}, "the picture is reversed"),
        ("flip_vertical", {}, "the picture is upside down"),
        ("rotate", {"direction": "clockwise"}, "the picture is turned a quarter turn clockwise"),
        ("invert", {}, "the light and dark are swapped"),
        ("blur", {}, "it looks blurrier"),
        ("sharpen", {}, "it looks sharper"),
        ("pixelate", {}, "it looks blocky, like big pixels"),
        ("posterize", {}, "it is reduced to a few flat colours"),
        ("lower_contrast", {}, "the contrast is weaker"),
        ("zoom", {}, "the picture moved around"),
        ("tint", {"colour": "blue"}, "it has a blue cast"),
        ("border", {"colour": "green"}, "a green frame appeared along the edges"),
        ("shape", {"shape": "circle", "colour": "yellow", "corner": "bottom right"}, "only the bottom right corner"),
    ],
)
def test_each_edit_on_the_astronaut_is_seen(kind, params, expected, source):
    seen = visible_changes(source, apply_edit(kind, source, params))
    assert any(phrase.startswith(expected) for phrase in seen), seen


# Phrases that only the listed edit kinds can cause: a phrase said without one of them would be false.
ONLY_FROM = {
    "reversed": {"flip_horizontal"},
    "upside down": {"flip_vertical"},
    "quarter turn": {"rotate"},
    "the colour is gone": {"grayscale"},
    "light and dark are swapped": {"invert"},
    "blocky": {"pixelate"},
    "few flat colours": {"posterize"},
    "frame appeared": {"border"},
    "corner changed": {"shape"},
}


def test_phrases_on_demo_candidates_are_true(tasks):
    for task in tasks:
        for candidate in task.candidates:
            seen = visible_changes(task.source, candidate.image)
            kinds = {edit.kind for edit in candidate.edits}
            assert 1 <= len(seen) <= 4
            for phrase in seen:
                for words, causes in ONLY_FROM.items():
                    assert words not in phrase or kinds & causes, (phrase, candidate.describe())
            if kinds == {"darken"}:
                assert not any("brighter" in phrase for phrase in seen)
            if kinds == {"brighten"}:
                assert not any("darker" in phrase for phrase in seen)


def test_demo_candidates_with_one_full_edit_show_it(tasks):
    expected = {  # kind → a phrase its full-strength edit always causes
        "darken": "darker",
        "brighten": "brighter",
        "grayscale": "the colour is gone",
        "flip_horizontal": "reversed",
        "flip_vertical": "upside down",
        "rotate": "quarter turn",
        "invert": "swapped",
        "pixelate": "blocky",
        "posterize": "few flat colours",
        "border": "frame appeared",
        "shape": "corner changed",
        "sharpen": "sharper",
        "lower_contrast": "contrast is weaker",
    }
    checked = 0
    for task in tasks:
        for candidate in task.candidates:
            seen = " / ".join(visible_changes(task.source, candidate.image))
            if not candidate.edits:
                assert seen == "almost nothing changed"
            elif len(candidate.edits) == 1 and candidate.edits[0].strength == 1 and candidate.edits[0].kind in expected:
                edit = candidate.edits[0]
                assert expected[edit.kind] in seen, (edit, seen)
                if edit.kind == "shape":
                    assert f"only the {dict(edit.params)['corner']} corner changed" in seen
                checked += 1
    assert checked >= 60


def test_phrases_never_name_a_side():
    # A side word would be rewritten by trainer.data.neutral_rationale; corners ("top left") are not sides.
    for task in (demo_task(11, i) for i in range(25)):
        for candidate in task.candidates:
            for phrase in visible_changes(task.source, candidate.image):
                assert not re.search(r"(?<!top )(?<!bottom )\b(left|right)\b", phrase), phrase
