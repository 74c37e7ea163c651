"""The demo dataset without a database: tasks of a source photo, an instruction, the correct edit and flawed ones.

Everything is a pure function of `(seed, task index)`: `demo_task(seed, i)` draws a random crop of a real photo
(`storage.demo_photos`), an edit kind and its parameters (`storage.demo_kinds`), an instruction in one of several
phrasings, the correct edit and 1–3 flawed ones; `storage.demo_votes.demo_votes(task, ...)` simulates annotators
comparing every pair, with written rationales. The correct edit differs from the flawed ones only in *what it did to
the source*, never in its position, its generator name or its file, so a reward model can learn the task only by
reading the instruction and comparing source and edit.

Flaws and their quality (the annotators' ordering, best first):
    none 1.0 > partial_strength 0.6 > extra_change 0.5 > wrong_param 0.25 > wrong_op 0.1 > no_op 0.0
A partial edit did the right thing too weakly; an extra change did it and also something unasked; a wrong
parameter did the right operation the wrong way (blue instead of red, counterclockwise, darker instead of
brighter); a wrong operation did something from another family of edits; a no-op returned the source.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from PIL import Image

from storage.demo_kinds import EDIT_KINDS, SIDE_EFFECTS, EditKind, EditSpec, phrase_instruction, sample_spec
from storage.demo_photos import (
    DEFAULT_SIZE,
    available_photos,  # noqa: F401 - re-exported: trainer.pretrain imported it from here
    is_colour,
    mean_abs_diff,
    sample_source,
)

Flaw = Literal["none", "partial_strength", "extra_change", "wrong_param", "wrong_op", "no_op"]

MIN_EDIT_DIFF = 4.0  # mean |Δ| (0–255) the correct edit must make to the source: no invisible tasks
MIN_CANDIDATE_DIFF = 1.5  # mean |Δ| between any two candidates of a task (and a flawed edit and the source)
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
    spec: EditSpec, rng: random.Random, size: int, random_crop: bool, photos: tuple[str, ...] | None = None
) -> tuple[str, Image.Image, Image.Image]:
    """A (photo, source, correct edit) where the edit visibly changes the source."""
    kind = EDIT_KINDS[spec.kind]
    for _ in range(MAX_SOURCE_ATTEMPTS):
        photo, source = sample_source(rng, size=size, random_crop=random_crop, photos=photos)
        if kind.needs_colour and not is_colour(source):
            continue
        good = spec.apply(source)
        if mean_abs_diff(good, source) >= MIN_EDIT_DIFF:
            return photo, source, good
    raise RuntimeError(f"No photo crop shows a visible {spec.kind!r} edit after {MAX_SOURCE_ATTEMPTS} tries.")


def demo_task(seed: int, index: int, *, size: int = DEFAULT_SIZE, random_crop: bool = True) -> DemoTask:
    """Demo task number `index` for `seed`: the same arguments always give the same pixels and text."""
    rng = random.Random(f"jrm-demo:{seed}:{index}")
    return build_task(rng, seed=seed, index=index, size=size, random_crop=random_crop)


def build_task(
    rng: random.Random,
    *,
    seed: int,
    index: int,
    size: int = DEFAULT_SIZE,
    random_crop: bool = True,
    photos: tuple[str, ...] | None = None,
    phrase: Callable[[EditSpec, random.Random], str] = phrase_instruction,
) -> DemoTask:
    """A task drawn from `rng`: an edit, a source from `photos` it visibly changes, `phrase`d, and its candidates.

    `demo_task` draws from the demo's stream with the demo's phrasings; pretraining draws other streams, from its
    own photos and grammar.
    """
    spec = sample_spec(rng.choice(tuple(EDIT_KINDS)), rng)
    photo, source, good = _visible_source(spec, rng, size, random_crop, photos)
    instruction = phrase(spec, rng)
    count = rng.choices(list(CANDIDATE_COUNT_WEIGHTS), weights=list(CANDIDATE_COUNT_WEIGHTS.values()))[0]
    results = [("none", (spec,), good, False), *_flawed_results(spec, source, good, count - 1, rng)]
    generators = assign_generators([r[0] for r in results], rng)
    candidates = [
        DemoCandidate(g, flaw, edits, image, reencoded)
        for g, (flaw, edits, image, reencoded) in zip(generators, results, strict=True)
    ]
    rng.shuffle(candidates)  # the correct edit's position (and so its row id) tells nothing
    return DemoTask(seed, index, photo, source, spec, instruction, tuple(candidates))
