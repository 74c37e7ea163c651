"""The demo dataset without a database: photos, procedural edits, phrasings, flawed candidates and votes.

Everything is a pure function of `(seed, task index)`: `demo_task(seed, i)` draws a random crop of a real
photo (scikit-image and matplotlib ship them offline), an edit kind and its parameters, an instruction in
one of several phrasings, the correct edit and 1–3 flawed ones, and `demo_votes(task, ...)` simulates
annotators comparing every pair, with written rationales. The correct edit differs from the flawed ones
only in *what it did to the source*, never in its position, its generator name or its file, so a reward
model can learn the task only by reading the instruction and comparing source and edit.

Flaws and their quality (the annotators' ordering, best first):
    none 1.0 > partial_strength 0.6 > extra_change 0.5 > wrong_param 0.25 > wrong_op 0.1 > no_op 0.0
A partial edit did the right thing too weakly; an extra change did it and also something unasked; a wrong
parameter did the right operation the wrong way (blue instead of red, counterclockwise, darker instead of
brighter); a wrong operation did something from another family of edits; a no-op returned the source.
"""

from __future__ import annotations

import functools
import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import combinations
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from storage.models import CHOICES, Choice

Params = dict[str, str]
EditFn = Callable[[Image.Image, Params, float], Image.Image]
Flaw = Literal["none", "partial_strength", "extra_change", "wrong_param", "wrong_op", "no_op"]

DEFAULT_SIZE = 128
MIN_EDIT_DIFF = 4.0  # mean |Δ| (0–255) the correct edit must make to the source: no invisible tasks
MIN_CANDIDATE_DIFF = 1.5  # mean |Δ| between any two candidates of a task (and a flawed edit and the source)
CROP_SCALE = (0.45, 1.0)  # a random crop's side as a fraction of the photo's short side
MAX_SOURCE_ATTEMPTS = 40

QUALITY: dict[str, float] = {
    "none": 1.0,
    "partial_strength": 0.6,
    "extra_change": 0.5,
    "wrong_param": 0.25,
    "wrong_op": 0.1,
    "no_op": 0.0,
}
FLAW_WEIGHTS: dict[str, float] = {  # how often each flaw is drawn for a task's flawed candidates
    "partial_strength": 1.0,
    "extra_change": 1.0,
    "wrong_param": 1.0,
    "wrong_op": 1.0,
    "no_op": 0.6,
}
CANDIDATE_COUNT_WEIGHTS = {2: 3, 3: 4, 4: 3}
BAD_QUALITY = 0.3  # a pair whose better side is at most this is "both bad" material
TIE_MARGIN = 0.12  # qualities this close are tie material
P_BOTH_BAD = 0.8  # how often a both-bad pair is voted both_bad (else the better of the two)
P_TIE = 0.5  # how often a close pair is voted a tie
P_NO_RATIONALE = 0.1
OPEN_TASK_FRACTION = 0.1  # tasks whose pairs stay below the overlap target, so people have pairs to vote on

# Editing "models": how likely each one produces each outcome. Outcomes are drawn first, then given to
# generators by these weights, so the leaderboard has a real order without a name giving the answer away.
FLAWS: tuple[Flaw, ...] = ("none", "partial_strength", "extra_change", "wrong_param", "wrong_op", "no_op")
_PROFILE_WEIGHTS = {  # in `FLAWS` order
    "magicbrush-sim": (5, 2, 1, 1, 0.5, 0.3),
    "ultraedit-sim": (4, 1, 1, 2, 0.5, 0.5),
    "instructpix2pix-sim": (3, 2, 2, 1, 1, 0.5),
    "anyedit-sim": (2, 1, 1, 1, 2, 1),
    "overedit-sim": (1.5, 0.5, 4, 1, 1, 0.2),
    "noop-baseline": (0.5, 2, 0.2, 0.5, 0.3, 5),
}
GENERATOR_PROFILES: dict[str, dict[str, float]] = {
    name: dict(zip(FLAWS, weights, strict=True)) for name, weights in _PROFILE_WEIGHTS.items()
}

# --------------------------------------------------------------------------------------------- photos


def _skimage_photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg", asfileobj=True) as f:
        return np.asarray(Image.open(f).convert("RGB"))


# Real photos that ship inside scikit-image and matplotlib (no download). Others in skimage.data need pooch.
PHOTO_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    **{
        name: _skimage_photo(name)
        for name in (
            "astronaut",
            "chelsea",
            "coffee",
            "rocket",
            "camera",
            "coins",
            "hubble_deep_field",
            "immunohistochemistry",
            "retina",
            "moon",
        )
    },
    "motorcycle": _motorcycle,
    "grace_hopper": _grace_hopper,
}


def _to_rgb(pixels: np.ndarray) -> Image.Image:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(pixels[..., :3], "RGB")


@functools.cache
def load_photo(name: str) -> Image.Image | None:
    """The photo `name` as RGB, or None when this machine cannot load it offline."""
    try:
        return _to_rgb(PHOTO_LOADERS[name]())
    except Exception:  # noqa: BLE001 - a missing optional data file (pooch, network) just drops that photo
        return None


@functools.cache
def available_photos() -> tuple[str, ...]:
    """Names of the photos that load on this machine, in a fixed order."""
    names = tuple(name for name in PHOTO_LOADERS if load_photo(name) is not None)
    if not names:
        raise RuntimeError("No demo photo loads offline: install scikit-image and matplotlib with their data.")
    return names


def sample_source(rng: random.Random, *, size: int = DEFAULT_SIZE, random_crop: bool = True) -> tuple[str, Image.Image]:
    """A photo's name and a square `size`×`size` crop of it: random position and scale, or the centre."""
    name = rng.choice(available_photos())
    photo = load_photo(name)
    width, height = photo.size
    side = min(width, height)
    crop = round(side * rng.uniform(*CROP_SCALE)) if random_crop else side
    left = rng.randint(0, width - crop) if random_crop else (width - crop) // 2
    top = rng.randint(0, height - crop) if random_crop else (height - crop) // 2
    return name, photo.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + crop, top + crop))


def is_colour(image: Image.Image) -> bool:
    """Whether the picture has visible colour (grayscale and sepia edits are invisible otherwise)."""
    pixels = np.asarray(image, dtype=np.int16)
    return float(np.abs(pixels - pixels.mean(axis=-1, keepdims=True)).mean()) > 4.0


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute pixel difference (0–255) between two same-size RGB pictures."""
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


# ---------------------------------------------------------------------------------------------- edits

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (30, 80, 230),
    "yellow": (240, 215, 30),
    "purple": (140, 50, 200),
    "orange": (245, 135, 20),
}
DIRECTIONS = ("clockwise", "counterclockwise")
SHAPES = ("circle", "square")
CORNERS = ("top left", "top right", "bottom left", "bottom right")


def _blend(image: Image.Image, edited: Image.Image, strength: float) -> Image.Image:
    return edited if strength >= 1 else Image.blend(image, edited, strength)


def _flip_horizontal(image: Image.Image, _params: Params, _strength: float) -> Image.Image:
    return ImageOps.mirror(image)


def _flip_vertical(image: Image.Image, _params: Params, _strength: float) -> Image.Image:
    return ImageOps.flip(image)


def _rotate(image: Image.Image, params: Params, _strength: float) -> Image.Image:
    clockwise = params["direction"] == "clockwise"
    return image.transpose(Image.Transpose.ROTATE_270 if clockwise else Image.Transpose.ROTATE_90)


def _grayscale(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    return _blend(image, ImageOps.grayscale(image).convert("RGB"), strength)


def _sepia(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    toned = ImageOps.colorize(ImageOps.grayscale(image), black=(40, 26, 13), white=(255, 236, 196), mid=(170, 120, 70))
    return _blend(image, toned, strength)


def _tint(image: Image.Image, params: Params, strength: float) -> Image.Image:
    toned = ImageOps.colorize(ImageOps.grayscale(image), black=(0, 0, 0), white=COLOURS[params["colour"]])
    toned = ImageEnhance.Brightness(toned).enhance(1.3)
    return Image.blend(image, toned, 0.75 * strength)


def _blur(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=2.5 * strength))


def _sharpen(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    return image.filter(ImageFilter.UnsharpMask(radius=2, percent=round(300 * strength), threshold=0))


def _brightness(factor: float) -> EditFn:
    def edit(image: Image.Image, _params: Params, strength: float) -> Image.Image:
        return ImageEnhance.Brightness(image).enhance(1 + (factor - 1) * strength)

    return edit


def _contrast(factor: float) -> EditFn:
    def edit(image: Image.Image, _params: Params, strength: float) -> Image.Image:
        return ImageEnhance.Contrast(image).enhance(1 + (factor - 1) * strength)

    return edit


def _invert(image: Image.Image, _params: Params, _strength: float) -> Image.Image:
    return ImageOps.invert(image)


def _zoom(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    width, height = image.size
    keep = 1 / (1 + strength)  # 2× at full strength
    box = (width * (1 - keep) / 2, height * (1 - keep) / 2, width * (1 + keep) / 2, height * (1 + keep) / 2)
    return image.resize(image.size, Image.Resampling.LANCZOS, box=box)


def _border(image: Image.Image, params: Params, strength: float) -> Image.Image:
    framed = image.copy()
    width = max(1, round(min(image.size) * 0.09 * strength))
    ImageDraw.Draw(framed).rectangle(
        (0, 0, image.width - 1, image.height - 1), outline=COLOURS[params["colour"]], width=width
    )
    return framed


def shape_box(size: tuple[int, int], corner: str, strength: float) -> tuple[int, int, int, int]:
    """The bounding box of the overlay shape in `corner` ("top left", …) of a picture of `size`."""
    side = max(3, round(min(size) * 0.3 * strength))
    margin = max(2, round(min(size) * 0.05))
    vertical, horizontal = corner.split()
    left = margin if horizontal == "left" else size[0] - margin - side
    top = margin if vertical == "top" else size[1] - margin - side
    return left, top, left + side - 1, top + side - 1


def _shape(image: Image.Image, params: Params, strength: float) -> Image.Image:
    drawn = image.copy()
    draw = ImageDraw.Draw(drawn)
    box = shape_box(image.size, params["corner"], strength)
    fill = COLOURS[params["colour"]]
    draw.ellipse(box, fill=fill) if params["shape"] == "circle" else draw.rectangle(box, fill=fill)
    return drawn


def _pixelate(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    block = max(2, round(8 * strength))
    small = image.resize((max(1, image.width // block), max(1, image.height // block)), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.NEAREST)


def _posterize(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    return ImageOps.posterize(image, max(1, round(8 - 6 * strength)))


@dataclass(frozen=True)
class EditKind:
    """One kind of edit: how to apply it, how people ask for it, and how an annotator describes it."""

    name: str
    family: str  # wrong operations and extra changes come from another family, so they are clearly wrong
    apply: EditFn
    phrasings: tuple[str, ...]  # instruction templates over `params`
    did: str  # what a candidate did, e.g. "tinted it {colour}"
    did_weak: str = ""  # the same edit at `partial_strength`
    params: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, choices)
    partial_strength: float | None = None  # None: the edit has no "too weak" version (flips, rotations)
    opposite: str | None = None  # the kind that does it "the wrong way" (a wrong-parameter flaw)
    needs_colour: bool = False  # invisible on a grayscale source

    def sample_params(self, rng: random.Random) -> Params:
        """Parameters drawn uniformly from this kind's choices."""
        return {name: rng.choice(choices) for name, choices in self.params}

    def describe(self, params: Params, strength: float = 1.0) -> str:
        """What a candidate that applied this edit did, for rationales."""
        return (self.did if strength >= 1 else self.did_weak).format(**params)


_COLOUR = ("colour", tuple(COLOURS))
EDIT_KINDS: dict[str, EditKind] = {
    k.name: k
    for k in (
        EditKind(
            "flip_horizontal",
            "geometry",
            _flip_horizontal,
            (
                "Flip the image horizontally",
                "Mirror this photo left to right",
                "Make a mirror image of the picture",
                "Flip the picture so that left and right swap",
            ),
            "mirrored it left to right",
            opposite="flip_vertical",
        ),
        EditKind(
            "flip_vertical",
            "geometry",
            _flip_vertical,
            (
                "Flip the image vertically",
                "Mirror this photo top to bottom",
                "Flip the picture so the top is at the bottom",
                "Flip it vertically, top to bottom",
            ),
            "flipped it top to bottom",
            opposite="flip_horizontal",
        ),
        EditKind(
            "rotate",
            "geometry",
            _rotate,
            (
                "Rotate the image 90 degrees {direction}",
                "Turn the photo a quarter turn {direction}",
                "Rotate this picture by 90° {direction}",
                "Give the image a quarter rotation {direction}",
            ),
            "rotated it 90° {direction}",
            params=(("direction", DIRECTIONS),),
        ),
        EditKind(
            "zoom",
            "geometry",
            _zoom,
            (
                "Zoom into the centre of the image",
                "Crop to the middle of the photo",
                "Zoom in 2x on the centre",
                "Crop the picture tightly around its centre",
            ),
            "zoomed into the centre",
            did_weak="zoomed in only a little",
            partial_strength=0.2,
        ),
        EditKind(
            "grayscale",
            "colour",
            _grayscale,
            (
                "Make the photo black and white",
                "Convert the image to grayscale",
                "Remove all the colour from this picture",
                "Turn this into a grey-scale photo",
            ),
            "made it black and white",
            did_weak="only slightly drained the colour",
            partial_strength=0.3,
            needs_colour=True,
        ),
        EditKind(
            "sepia",
            "colour",
            _sepia,
            (
                "Give the photo a sepia tone",
                "Make this picture look like an old sepia photograph",
                "Apply a vintage sepia filter",
                "Turn the image brownish like an antique photo",
            ),
            "gave it a sepia tone",
            did_weak="added only a faint sepia tint",
            partial_strength=0.25,
        ),
        EditKind(
            "tint",
            "colour",
            _tint,
            (
                "Tint the photo {colour}",
                "Give the image a {colour} colour cast",
                "Add a {colour} filter to the picture",
                "Make everything look {colour}",
            ),
            "tinted it {colour}",
            did_weak="tinted it {colour} only faintly",
            params=(_COLOUR,),
            partial_strength=0.25,
        ),
        EditKind(
            "invert",
            "colour",
            _invert,
            (
                "Invert the colours",
                "Make a photographic negative of this image",
                "Invert the image",
                "Turn the picture into its negative",
            ),
            "inverted the colours",
        ),
        EditKind(
            "posterize",
            "colour",
            _posterize,
            (
                "Posterize the image",
                "Reduce the photo to a few flat colour levels",
                "Give the picture a posterized, poster-print look",
                "Cut down the number of colours so it looks like a poster",
            ),
            "posterized it",
            did_weak="posterized it only subtly",
            partial_strength=0.6,
        ),
        EditKind(
            "brighten",
            "light",
            _brightness(1.7),
            ("Make the image brighter", "Brighten the photo", "Increase the brightness", "Lighten up this picture"),
            "brightened it",
            did_weak="brightened it only a little",
            partial_strength=0.3,
            opposite="darken",
        ),
        EditKind(
            "darken",
            "light",
            _brightness(0.45),
            (
                "Make the image darker",
                "Darken the photo",
                "Reduce the brightness",
                "Turn down the brightness of this picture",
            ),
            "darkened it",
            did_weak="darkened it only a little",
            partial_strength=0.3,
            opposite="brighten",
        ),
        EditKind(
            "contrast",
            "light",
            _contrast(2.0),
            (
                "Increase the contrast",
                "Make the photo more contrasty",
                "Boost the contrast of the image",
                "Make the darks darker and the lights lighter",
            ),
            "increased the contrast",
            did_weak="raised the contrast only slightly",
            partial_strength=0.25,
            opposite="lower_contrast",
        ),
        EditKind(
            "lower_contrast",
            "light",
            _contrast(0.35),
            (
                "Reduce the contrast",
                "Make the photo look flat and washed out",
                "Lower the contrast of this image",
                "Soften the contrast so everything looks faded",
            ),
            "lowered the contrast",
            did_weak="lowered the contrast only slightly",
            partial_strength=0.3,
            opposite="contrast",
        ),
        EditKind(
            "blur",
            "detail",
            _blur,
            (
                "Blur the image",
                "Make the photo blurry",
                "Apply a soft blur to the whole picture",
                "Make the picture out of focus",
            ),
            "blurred it",
            did_weak="blurred it so slightly it barely shows",
            partial_strength=0.2,
            opposite="sharpen",
        ),
        EditKind(
            "sharpen",
            "detail",
            _sharpen,
            (
                "Sharpen the image",
                "Make the photo crisper",
                "Increase the sharpness of this picture",
                "Make the fine details sharper",
            ),
            "sharpened it",
            did_weak="sharpened it only a tiny bit",
            partial_strength=0.2,
            opposite="blur",
        ),
        EditKind(
            "pixelate",
            "detail",
            _pixelate,
            (
                "Pixelate the image",
                "Make the photo look like low-resolution pixel art",
                "Apply a mosaic effect to the picture",
                "Turn the image into big blocky pixels",
            ),
            "pixelated it",
            did_weak="pixelated it so finely it hardly shows",
            partial_strength=0.25,
        ),
        EditKind(
            "border",
            "overlay",
            _border,
            (
                "Add a {colour} border around the image",
                "Put a thick {colour} frame around the photo",
                "Frame this picture in {colour}",
                "Surround the image with a {colour} border",
            ),
            "added a {colour} border",
            did_weak="added only a hairline {colour} border",
            params=(_COLOUR,),
            partial_strength=0.15,
        ),
        EditKind(
            "shape",
            "overlay",
            _shape,
            (
                "Draw a {colour} {shape} in the {corner} corner",
                "Add a {colour} {shape} to the {corner} corner of the photo",
                "Put a big {colour} {shape} in the {corner} corner",
                "Place a {colour} {shape} at the {corner} corner",
            ),
            "drew a {colour} {shape} in the {corner} corner",
            did_weak="drew only a tiny {colour} {shape} in the {corner} corner",
            params=(("shape", SHAPES), _COLOUR, ("corner", CORNERS)),
            partial_strength=0.3,
        ),
    )
}
# Unasked side effects an over-eager editor adds on top of the right edit.
SIDE_EFFECTS = ("blur", "darken", "brighten", "border", "shape", "grayscale", "flip_vertical", "pixelate")


@dataclass(frozen=True)
class EditSpec:
    """One edit to apply: its kind, parameters and strength (1.0 is the full edit)."""

    kind: str
    params: tuple[tuple[str, str], ...] = ()
    strength: float = 1.0

    @classmethod
    def of(cls, kind: str, params: Params | None = None, strength: float = 1.0) -> EditSpec:
        """A spec from a parameter dict."""
        return cls(kind, tuple(sorted((params or {}).items())), strength)

    def apply(self, image: Image.Image) -> Image.Image:
        """The edited picture (a new image; `image` is untouched)."""
        return EDIT_KINDS[self.kind].apply(image, dict(self.params), self.strength)

    def describe(self) -> str:
        """What this edit did, in an annotator's words."""
        return EDIT_KINDS[self.kind].describe(dict(self.params), self.strength)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready record of the edit."""
        return {"kind": self.kind, "params": dict(self.params), "strength": self.strength}


def apply_edit(kind: str, image: Image.Image, params: Params | None = None, strength: float = 1.0) -> Image.Image:
    """Apply the edit `kind` with `params` at `strength` to `image`."""
    return EditSpec.of(kind, params, strength).apply(image)


def phrase_instruction(spec: EditSpec, rng: random.Random) -> str:
    """One of the kind's phrasings, filled with the spec's parameters."""
    return rng.choice(EDIT_KINDS[spec.kind].phrasings).format(**dict(spec.params))


def sample_spec(kind: str, rng: random.Random) -> EditSpec:
    """A full-strength edit of `kind` with random parameters."""
    return EditSpec.of(kind, EDIT_KINDS[kind].sample_params(rng))


# ------------------------------------------------------------------------------------------ candidates


@dataclass(frozen=True)
class DemoCandidate:
    """One candidate edit: the generator that "made" it, its flaw, the edits applied and the result."""

    generator: str
    flaw: Flaw
    edits: tuple[EditSpec, ...]  # empty: a no-op
    image: Image.Image
    reencoded: bool = False  # a no-op that went through a JPEG round trip, as a lazy editor might return it

    @property
    def quality(self) -> float:
        """The simulated annotators' quality of this candidate (1.0: the correct edit)."""
        return QUALITY[self.flaw]

    def describe(self) -> str:
        """What this candidate did to the source, in an annotator's words."""
        if not self.edits:
            return "made no visible change"
        return " but also ".join(edit.describe() for edit in self.edits)

    def extra(self) -> dict[str, object]:
        """The JSON kept in `Candidate.extra`: the flaw, its quality and what was done."""
        return {
            "flaw": self.flaw,
            "quality": self.quality,
            "edits": [e.as_dict() for e in self.edits],
            "reencoded": self.reencoded,
            "description": self.describe(),
        }


@dataclass(frozen=True)
class DemoTask:
    """A source crop, the requested edit and its instruction, and 2–4 candidates in a random order."""

    seed: int
    index: int
    photo: str
    source: Image.Image
    edit: EditSpec
    instruction: str
    candidates: tuple[DemoCandidate, ...]

    @property
    def category(self) -> str:
        return self.edit.kind

    @property
    def external_id(self) -> str:
        return f"demo-{self.seed}-{self.index}"


def _reencode(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, subsampling=0)  # mean |Δ| ≈ 1.6
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _other_family(kind: EditKind, names: tuple[str, ...], colour_source: bool) -> list[str]:
    """Kinds among `names` from another family than `kind` that are visible on this source."""
    others = [EDIT_KINDS[name] for name in names]
    return [k.name for k in others if k.family != kind.family and (colour_source or not k.needs_colour)]


def wrong_param(spec: EditSpec, rng: random.Random) -> EditSpec | None:
    """The same edit done the wrong way (another colour, corner or direction), or None if it has no such."""
    kind = EDIT_KINDS[spec.kind]
    if kind.params:
        params = dict(spec.params)
        name, choices = rng.choice(kind.params)
        params[name] = rng.choice([c for c in choices if c != params[name]])
        return EditSpec.of(spec.kind, params, spec.strength)
    return sample_spec(kind.opposite, rng) if kind.opposite else None


def flaw_edits(flaw: Flaw, spec: EditSpec, rng: random.Random, *, colour_source: bool) -> tuple[EditSpec, ...] | None:
    """The edits a candidate with `flaw` applies for the requested `spec`; None when `flaw` does not apply."""
    kind = EDIT_KINDS[spec.kind]
    if flaw == "none":
        return (spec,)
    if flaw == "no_op":
        return ()
    if flaw == "partial_strength":
        return None if kind.partial_strength is None else (replace(spec, strength=kind.partial_strength),)
    if flaw == "wrong_param":
        wrong = wrong_param(spec, rng)
        return None if wrong is None else (wrong,)
    if flaw == "wrong_op":
        return (sample_spec(rng.choice(_other_family(kind, tuple(EDIT_KINDS), colour_source)), rng),)
    side_effect = rng.choice(_other_family(kind, SIDE_EFFECTS, colour_source))
    return spec, sample_spec(side_effect, rng)


def _render(source: Image.Image, edits: tuple[EditSpec, ...], rng: random.Random) -> tuple[Image.Image, bool]:
    if not edits:
        reencode = rng.random() < 0.5
        return (_reencode(source) if reencode else source.copy()), reencode
    image = source
    for edit in edits:
        image = edit.apply(image)
    return image, False


def _distinct(image: Image.Image, others: list[Image.Image]) -> bool:
    return all(mean_abs_diff(image, other) >= MIN_CANDIDATE_DIFF for other in others)


def _flawed_results(
    spec: EditSpec, source: Image.Image, good: Image.Image, count: int, rng: random.Random
) -> list[tuple[Flaw, tuple[EditSpec, ...], Image.Image, bool]]:
    """Up to `count` flawed (flaw, edits, image, reencoded), each visibly different from every other candidate."""
    colour_source = is_colour(source)
    weights = dict(FLAW_WEIGHTS)
    results: list[tuple[Flaw, tuple[EditSpec, ...], Image.Image, bool]] = []
    while weights and len(results) < count:
        flaw = rng.choices(list(weights), weights=list(weights.values()))[0]
        del weights[flaw]
        edits = flaw_edits(flaw, spec, rng, colour_source=colour_source)
        if edits is None:
            continue
        image, reencoded = _render(source, edits, rng)
        # A flawed edit must differ from the source too, except a no-op, which *is* the source.
        others = [good] + [r[2] for r in results] + ([source] if edits else [])
        if _distinct(image, others):
            results.append((flaw, edits, image, reencoded))
    if not results:  # keep ≥2 candidates: the exact source is always far enough from the correct edit
        results.append(("no_op", (), source.copy(), False))
    return results


def assign_generators(flaws: list[str], rng: random.Random) -> list[str]:
    """A distinct generator name for each outcome, drawn by the generators' propensity for it."""
    free = list(GENERATOR_PROFILES)
    names = [""] * len(flaws)
    for i in rng.sample(range(len(flaws)), len(flaws)):
        name = rng.choices(free, weights=[GENERATOR_PROFILES[g][flaws[i]] for g in free])[0]
        free.remove(name)
        names[i] = name
    return names


def _visible_source(
    spec: EditSpec, rng: random.Random, size: int, random_crop: bool
) -> tuple[str, Image.Image, Image.Image]:
    """A (photo, source, correct edit) where the edit visibly changes the source."""
    kind = EDIT_KINDS[spec.kind]
    for _ in range(MAX_SOURCE_ATTEMPTS):
        photo, source = sample_source(rng, size=size, random_crop=random_crop)
        if kind.needs_colour and not is_colour(source):
            continue
        good = spec.apply(source)
        if mean_abs_diff(good, source) >= MIN_EDIT_DIFF:
            return photo, source, good
    raise RuntimeError(f"No photo crop shows a visible {spec.kind!r} edit after {MAX_SOURCE_ATTEMPTS} tries.")


def demo_task(seed: int, index: int, *, size: int = DEFAULT_SIZE, random_crop: bool = True) -> DemoTask:
    """Demo task number `index` for `seed`: the same arguments always give the same pixels and text."""
    rng = random.Random(f"jrm-demo:{seed}:{index}")
    spec = sample_spec(rng.choice(tuple(EDIT_KINDS)), rng)
    photo, source, good = _visible_source(spec, rng, size, random_crop)
    instruction = phrase_instruction(spec, rng)
    count = rng.choices(list(CANDIDATE_COUNT_WEIGHTS), weights=list(CANDIDATE_COUNT_WEIGHTS.values()))[0]
    results = [("none", (spec,), good, False), *_flawed_results(spec, source, good, count - 1, rng)]
    generators = assign_generators([r[0] for r in results], rng)
    candidates = [
        DemoCandidate(g, flaw, edits, image, reencoded)
        for g, (flaw, edits, image, reencoded) in zip(generators, results, strict=True)
    ]
    rng.shuffle(candidates)  # the correct edit's position (and so its row id) tells nothing
    return DemoTask(seed, index, photo, source, spec, instruction, tuple(candidates))


# ------------------------------------------------------------------------------------------------ votes


@dataclass(frozen=True)
class SimAnnotator:
    """A simulated annotator: no password (cannot log in), a personal error rate."""

    name: str
    error_rate: float


ERROR_RATES = (0.04, 0.06, 0.08, 0.10, 0.12)  # mean 8%: agreement is high but not perfect


def sim_annotators(count: int = 5) -> tuple[SimAnnotator, ...]:
    """`sim-annotator-1` … `sim-annotator-<count>` with error rates cycling through `ERROR_RATES`."""
    return tuple(SimAnnotator(f"sim-annotator-{i + 1}", ERROR_RATES[i % len(ERROR_RATES)]) for i in range(count))


@dataclass(frozen=True)
class SimVote:
    """One simulated vote on a pair of a task's candidates, as shown (left/right are candidate indices)."""

    pair_index: int
    annotator: str
    left: int
    right: int
    choice: Choice
    noisy: bool  # the annotator slipped: the choice is not the one the qualities call for
    rationale: str | None
    time_spent_ms: int
    client_submission_id: str


def intended_choice(q_left: float, q_right: float, rng: random.Random) -> Choice:
    """The choice a careful annotator makes for candidates of these qualities."""
    high, low = max(q_left, q_right), min(q_left, q_right)
    if high <= BAD_QUALITY and rng.random() < P_BOTH_BAD:
        return "both_bad"
    if high - low <= TIE_MARGIN and rng.random() < P_TIE:
        return "tie"
    if q_left == q_right:
        return rng.choice(("left", "right"))
    return "left" if q_left > q_right else "right"


_BETTER_CORRECT = (
    "{W} {w_did} as asked; {l} {l_did}.",
    'The instruction says "{instruction}". {W} {w_did}, which is exactly that, while {l} {l_did}.',
    "{W} follows the instruction: it {w_did}. {L} {l_did}.",
    "{L} {l_did}, so {w} wins: it {w_did}, as asked.",
)
_BETTER_FLAWED = (
    '{W} {w_did}, which is closer to "{instruction}" than {l}, which {l_did}.',
    "Neither is perfect, but {w} is nearer: it {w_did}, while {l} {l_did}.",
    "{W} is the better try. It {w_did}; {l} {l_did}.",
)
_TIE = (
    'Both are about equally close to "{instruction}": left {left_did}, right {right_did}.',
    "Hard to pick: left {left_did} and right {right_did}; neither is clearly better.",
    "A tie. Left {left_did}; right {right_did}. Each misses the instruction by about as much.",
)
_BOTH_BAD = (
    'Neither got "{instruction}" right: left {left_did} and right {right_did}.',
    "Neither does what was asked. Left {left_did}; right {right_did}.",
    'Both are wrong for "{instruction}": left {left_did}, right {right_did}.',
)
_VAGUE: dict[str, tuple[str, ...]] = {  # slips come with thin rationales, as careless votes do
    "side": ("{W} looks a bit better to me.", "I slightly prefer {w}.", "{W} seems closer to what was asked, I think."),
    "tie": ("They look about the same to me.", "I can't really tell them apart."),
    "both_bad": ("Neither looks right to me.", "I don't think either one did the edit properly."),
}


def write_rationale(
    choice: Choice, *, noisy: bool, left: DemoCandidate, right: DemoCandidate, instruction: str, rng: random.Random
) -> str:
    """A rationale for `choice` that names what each side did and refers to the instruction."""
    winner, loser = ("left", "right") if choice == "left" else ("right", "left")
    sides = {"left": left, "right": right}
    fields = {
        "W": winner.capitalize(),
        "w": winner,
        "L": loser.capitalize(),
        "l": loser,
        "w_did": sides[winner].describe(),
        "l_did": sides[loser].describe(),
        "left_did": left.describe(),
        "right_did": right.describe(),
        "instruction": instruction,
    }
    if noisy:
        templates = _VAGUE["side" if choice in ("left", "right") else choice]
    elif choice == "tie":
        templates = _TIE
    elif choice == "both_bad":
        templates = _BOTH_BAD
    else:
        templates = _BETTER_CORRECT if sides[winner].flaw == "none" else _BETTER_FLAWED
    return rng.choice(templates).format(**fields)


def _simulate_vote(
    task: DemoTask, pair: tuple[int, int], pair_index: int, annotator: SimAnnotator, rng: random.Random
) -> SimVote:
    left, right = pair if rng.random() < 0.5 else pair[::-1]
    shown_left, shown_right = task.candidates[left], task.candidates[right]
    intended = intended_choice(shown_left.quality, shown_right.quality, rng)
    noisy = rng.random() < annotator.error_rate
    choice = rng.choice([c for c in CHOICES if c != intended]) if noisy else intended
    rationale = None
    if rng.random() >= P_NO_RATIONALE:
        rationale = write_rationale(
            choice, noisy=noisy, left=shown_left, right=shown_right, instruction=task.instruction, rng=rng
        )
    submission_id = f"demo-{task.seed}-{task.index}-{pair_index}-{annotator.name}"
    time_spent_ms = round(rng.lognormvariate(math.log(9000), 0.5))
    return SimVote(pair_index, annotator.name, left, right, choice, noisy, rationale, time_spent_ms, submission_id)


def demo_votes(
    task: DemoTask, *, overlap_target: int = 2, annotators: tuple[SimAnnotator, ...] | None = None
) -> tuple[SimVote, ...]:
    """Votes on every pair of `task`'s candidates by `overlap_target` distinct annotators.

    About `OPEN_TASK_FRACTION` of tasks get fewer votes per pair, so a person opening the demo has pairs to vote on.
    """
    annotators = annotators or sim_annotators(max(5, overlap_target))
    if len(annotators) < overlap_target:
        raise ValueError(f"overlap_target={overlap_target} needs at least that many annotators, got {len(annotators)}.")
    rng = random.Random(f"jrm-demo-votes:{task.seed}:{task.index}")  # apart from the pixels' stream
    per_pair = overlap_target if rng.random() >= OPEN_TASK_FRACTION else rng.randrange(overlap_target)
    votes = []
    for pair_index, pair in enumerate(combinations(range(len(task.candidates)), 2)):
        for annotator in rng.sample(annotators, per_pair):
            votes.append(_simulate_vote(task, pair, pair_index, annotator, rng))
    return tuple(votes)
