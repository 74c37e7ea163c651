"""A grammar of edit instructions, far richer than the demo's four templates per kind.

Each edit kind has several imperative *cores* ("flip {it} horizontally", "mirror {it}") and participle phrases
("flipped left to right") over its parameters; an instruction is a core in a *frame* ("Please {core}.", "Could you
{core}?", "{core}, thanks"), with the object phrase drawn from synonyms, casing and punctuation varied and, now and
then, a typo. Pretraining samples from `instruction()`. `heldout_instruction()` uses frames that `instruction()`
never does (the request stated as a wish in the passive: "I need the photo flipped left to right") with the same
content words, so accuracy on it measures whether the language side learned the concept rather than the sentence.
Neither produces one of the demo store's templates (`storage.demo_kinds.EDIT_KINDS[kind].phrasings`): those stay
unseen by pretraining (`is_demo_phrasing`).
"""

from __future__ import annotations

import random
import re
from functools import cache

from storage.demo_kinds import EDIT_KINDS, EditSpec

OBJECTS = ("the image", "the photo", "the picture", "this photo", "this image", "this picture", "it", "the shot")

# kind → (imperative cores over {it} and the kind's params, participle phrases for the held-out frames)
CORES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "flip_horizontal": (
        (
            "flip {it} horizontally",
            "mirror {it} left to right",
            "flip {it} left to right",
            "mirror {it}",
            "swap the left and right sides of {it}",
            "reflect {it} horizontally",
            "do a horizontal flip of {it}",
        ),
        ("flipped horizontally", "mirrored left to right", "reflected left to right"),
    ),
    "flip_vertical": (
        (
            "flip {it} vertically",
            "flip {it} upside down",
            "mirror {it} top to bottom",
            "turn {it} upside down",
            "swap the top and bottom of {it}",
            "reflect {it} vertically",
            "do a vertical flip of {it}",
        ),
        ("flipped vertically", "flipped upside down", "mirrored top to bottom"),
    ),
    "rotate": (
        (
            "rotate {it} 90 degrees {direction}",
            "turn {it} a quarter turn {direction}",
            "rotate {it} {direction} by a quarter turn",
            "give {it} a 90 degree {direction} rotation",
            "turn {it} {direction} by ninety degrees",
            "spin {it} 90 degrees {direction}",
        ),
        ("rotated 90 degrees {direction}", "turned a quarter turn {direction}"),
    ),
    "zoom": (
        (
            "zoom in on the centre of {it}",
            "zoom into {it}",
            "crop {it} to its centre",
            "enlarge the middle of {it}",
            "zoom in 2x on {it}",
            "crop in tight on the middle of {it}",
            "magnify the centre of {it}",
        ),
        ("zoomed in on the centre", "cropped to the middle", "zoomed in"),
    ),
    "grayscale": (
        (
            "make {it} black and white",
            "convert {it} to grayscale",
            "remove the colour from {it}",
            "desaturate {it} completely",
            "turn {it} grey",
            "drain all the colour out of {it}",
            "make {it} monochrome",
        ),
        ("in black and white", "converted to grayscale", "without any colour"),
    ),
    "sepia": (
        (
            "give {it} a sepia tone",
            "apply a sepia filter to {it}",
            "make {it} look like an old brown photograph",
            "add a vintage sepia look to {it}",
            "tone {it} sepia",
            "make {it} brownish and antique",
        ),
        ("toned sepia", "in sepia", "with a vintage sepia look"),
    ),
    "tint": (
        (
            "tint {it} {colour}",
            "give {it} a {colour} cast",
            "add a {colour} filter to {it}",
            "wash {it} in {colour}",
            "colour {it} {colour}",
            "make {it} look {colour}",
            "put a {colour} tint on {it}",
        ),
        ("tinted {colour}", "washed in {colour}", "with a {colour} cast"),
    ),
    "invert": (
        (
            "invert the colours of {it}",
            "make a negative of {it}",
            "invert {it}",
            "turn {it} into a negative",
            "flip the colours of {it} to their opposites",
            "reverse the colours in {it}",
        ),
        ("inverted", "turned into a negative", "with its colours inverted"),
    ),
    "posterize": (
        (
            "posterize {it}",
            "reduce {it} to a few flat colours",
            "give {it} a poster look",
            "cut the colour levels of {it} down",
            "make {it} look like a screen print",
            "flatten the colours of {it}",
        ),
        ("posterized", "reduced to a few flat colours", "with flat poster colours"),
    ),
    "brighten": (
        (
            "brighten {it}",
            "make {it} brighter",
            "lighten {it}",
            "increase the brightness of {it}",
            "turn up the brightness of {it}",
            "make {it} lighter",
            "add light to {it}",
        ),
        ("brightened", "made brighter", "lightened"),
    ),
    "darken": (
        (
            "darken {it}",
            "make {it} darker",
            "reduce the brightness of {it}",
            "turn down the brightness of {it}",
            "dim {it}",
            "make {it} dimmer",
            "take some light out of {it}",
        ),
        ("darkened", "made darker", "dimmed"),
    ),
    "contrast": (
        (
            "increase the contrast of {it}",
            "boost the contrast of {it}",
            "make {it} more contrasty",
            "raise the contrast in {it}",
            "add contrast to {it}",
            "make the darks darker and the lights lighter in {it}",
        ),
        ("with more contrast", "with the contrast boosted", "more contrasty"),
    ),
    "lower_contrast": (
        (
            "reduce the contrast of {it}",
            "lower the contrast of {it}",
            "make {it} look flat and washed out",
            "soften the contrast of {it}",
            "fade {it}",
            "take the contrast down in {it}",
        ),
        ("with less contrast", "washed out", "with the contrast lowered"),
    ),
    "blur": (
        (
            "blur {it}",
            "make {it} blurry",
            "soften {it} with a blur",
            "put {it} out of focus",
            "apply a gaussian blur to {it}",
            "defocus {it}",
            "smooth {it} out with a blur",
        ),
        ("blurred", "out of focus", "made blurry"),
    ),
    "sharpen": (
        (
            "sharpen {it}",
            "make {it} crisper",
            "increase the sharpness of {it}",
            "make the details of {it} sharper",
            "crisp up {it}",
            "enhance the edges in {it}",
        ),
        ("sharpened", "made crisper", "with sharper details"),
    ),
    "pixelate": (
        (
            "pixelate {it}",
            "make {it} blocky",
            "apply a mosaic effect to {it}",
            "turn {it} into big pixels",
            "make {it} look like low resolution pixel art",
            "break {it} into coarse blocks",
        ),
        ("pixelated", "made blocky", "turned into big pixels"),
    ),
    "border": (
        (
            "add a {colour} border to {it}",
            "put a {colour} frame around {it}",
            "frame {it} in {colour}",
            "surround {it} with a {colour} border",
            "draw a thick {colour} edge around {it}",
        ),
        ("framed in {colour}", "with a {colour} border", "inside a {colour} frame"),
    ),
    "shape": (
        (
            "draw a {colour} {shape} in the {corner} corner of {it}",
            "add a {colour} {shape} to the {corner} corner",
            "put a {colour} {shape} at the {corner} corner of {it}",
            "place a big {colour} {shape} in the {corner} corner",
            "paint a {colour} {shape} into the {corner} corner of {it}",
        ),
        ("with a {colour} {shape} in the {corner} corner", "with a {colour} {shape} drawn at the {corner} corner"),
    ),
}

# Frames around a core. `{core}` starts lower case; `_finish` fixes capitals and punctuation.
FRAMES = (
    "{core}",
    "{core}.",
    "please {core}.",
    "{core}, please.",
    "could you {core}?",
    "can you {core} for me?",
    "i'd like you to {core}.",
    "i want you to {core}.",
    "would you {core}?",
    "just {core}.",
    "{core} for me",
    "go ahead and {core}.",
    "kindly {core}.",
    "{core}, thanks!",
    "hey, {core}",
    "edit: {core}",
    "your task: {core}.",
    "quick edit - {core}.",
    "{core} and keep everything else as it is.",
)
# Frames only the held-out set uses: the request as a wish, in the passive, with the object first.
HELDOUT_FRAMES = (
    "i need {it} {pp}.",
    "{it} should end up {pp}.",
    "what i want is {it} {pp}.",
    "{it}, {pp}, would be perfect.",
    "the goal: {it} {pp}.",
    "make sure {it} comes back {pp}.",
)
TYPO_RATE = 0.12  # share of instructions that get one typo
_WORD = re.compile(r"[a-z]{4,}")


def _fill(template: str, spec: EditSpec, rng: random.Random) -> str:
    return template.format(it=rng.choice(OBJECTS), **dict(spec.params))


def _finish(text: str, rng: random.Random) -> str:
    """Capitalise (most of the time), tidy spaces; lower-case everything now and then as people do."""
    text = re.sub(r"\s+", " ", text).strip()
    if rng.random() < 0.8:
        text = text[0].upper() + text[1:]
        text = re.sub(r"\bi\b", "I", text).replace("i'd", "I'd")
    return text


def _typo(text: str, rng: random.Random) -> str:
    """One swapped, dropped or doubled letter in one word of four letters or more."""
    words = list(_WORD.finditer(text))
    if not words:
        return text
    match = rng.choice(words)
    word, i = match.group(), rng.randrange(1, len(match.group()) - 1)
    edit = rng.choice(("swap", "drop", "double"))
    if edit == "swap":
        word = word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    elif edit == "drop":
        word = word[:i] + word[i + 1 :]
    else:
        word = word[:i] + word[i] + word[i:]
    return text[: match.start()] + word + text[match.end() :]


def _render(template: str, spec: EditSpec, rng: random.Random, typos: bool) -> str:
    text = _finish(template, rng)
    if typos and rng.random() < TYPO_RATE:
        text = _typo(text, rng)
    return text


def instruction(spec: EditSpec, rng: random.Random, *, typos: bool = True) -> str:
    """A training phrasing of `spec`: one of its kind's cores in a frame; never a demo template."""
    cores, _ = CORES[spec.kind]
    for _ in range(20):
        core = _fill(rng.choice(cores), spec, rng)
        text = _render(rng.choice(FRAMES).format(core=core), spec, rng, typos)
        if not is_demo_phrasing(text):
            return text
    raise RuntimeError(f"The grammar keeps producing demo phrasings for {spec.kind!r}; widen CORES.")


def heldout_instruction(spec: EditSpec, rng: random.Random) -> str:
    """A phrasing neither pretraining nor the demo uses (a held-out frame), for evaluation only."""
    _, participles = CORES[spec.kind]
    pp = _fill(rng.choice(participles), spec, rng)
    frame = rng.choice(HELDOUT_FRAMES)
    return _render(frame.format(it=rng.choice(OBJECTS[:6]), pp=pp), spec, rng, typos=False)


def _normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


@cache
def _demo_phrasings() -> frozenset[str]:
    """Every demo template with every parameter value filled in, normalised."""
    rendered = set()
    for kind in EDIT_KINDS.values():
        for template in kind.phrasings:
            names = [name for name, _ in kind.params]
            combos: list[dict[str, str]] = [{}]
            for name, choices in kind.params:
                combos = [{**c, name: choice} for c in combos for choice in choices]
            for params in combos:
                rendered.add(_normalise(template.format(**params)) if names else _normalise(template))
    return frozenset(rendered)


def is_demo_phrasing(text: str) -> bool:
    """Whether `text` is one of the demo store's instructions (up to case and punctuation)."""
    return _normalise(text) in _demo_phrasings()


def check_grammar() -> None:
    """Every edit kind has cores and participles, and every placeholder is one of its parameters."""
    missing = sorted(set(EDIT_KINDS) - set(CORES))
    if missing:
        raise ValueError(f"No phrasing grammar for edit kinds {missing}; add them to CORES.")
    for kind, (cores, participles) in CORES.items():
        allowed = {"it", *(name for name, _ in EDIT_KINDS[kind].params)}
        for template in cores + participles:
            used = set(re.findall(r"{(\w+)}", template))
            if not used <= allowed:
                raise ValueError(f"{kind}: {template!r} uses {sorted(used - allowed)}, not a parameter.")
