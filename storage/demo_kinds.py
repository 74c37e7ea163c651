"""The demo's catalogue of edits: each kind's operation, family, parameters, phrasings and description.

`EDIT_KINDS` names the pixel operations of `storage.demo_filters`, says how people ask for them (instruction
templates over the kind's parameters) and how an annotator describes a candidate that did them; an `EditSpec` is
one edit to apply (kind, parameters, strength). Families matter to the flawed candidates (`storage.demo_edits`):
a wrong operation or an extra change comes from another family, so it is clearly not what was asked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from storage import demo_filters as filters
from storage.demo_filters import COLOURS, CORNERS, DIRECTIONS, SHAPES, EditFn, Params


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
            filters.flip_horizontal,
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
            filters.flip_vertical,
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
            filters.rotate,
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
            filters.zoom,
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
            filters.grayscale,
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
            filters.sepia,
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
            filters.tint,
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
            filters.invert,
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
            filters.posterize,
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
            filters.brightness(1.7),
            ("Make the image brighter", "Brighten the photo", "Increase the brightness", "Lighten up this picture"),
            "brightened it",
            did_weak="brightened it only a little",
            partial_strength=0.3,
            opposite="darken",
        ),
        EditKind(
            "darken",
            "light",
            filters.brightness(0.45),
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
            filters.contrast(2.0),
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
            filters.contrast(0.35),
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
            filters.blur,
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
            filters.sharpen,
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
            filters.pixelate,
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
            filters.border,
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
            filters.shape,
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
