"""`python -m trainer.score_examples --out app/examples`: the Score tab's clickable examples, built from the demo edits.

Each example is a 128 px centre crop of a photo that pretraining never shows (`HELDOUT_PHOTOS`), an instruction, and
three edits of it in this order: the correct edit, one flawed edit made by the demo generator's flaw machinery
(`flaw_edits`: a wrong parameter or a wrong operation) and a no-op (the source itself, returned unchanged). A good
scorer ranks them in that order. The output is deterministic: the same code writes the same pixels and JSON.

This lives in the trainer, not in `python -m storage`, because the held-out photos are the pretraining recipe's
(`storage` imports neither the trainer nor the app). The app only reads the files (`app.handlers.score`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from storage.demo_edits import (
    DEFAULT_SIZE,
    EDIT_KINDS,
    MIN_CANDIDATE_DIFF,
    MIN_EDIT_DIFF,
    EditSpec,
    Flaw,
    flaw_edits,
    is_colour,
    mean_abs_diff,
    sample_source,
)
from trainer.pretrain.stream import HELDOUT_PHOTOS

EXAMPLES_FILE = "examples.json"
NO_OP_DID = "returned the source unchanged"


@dataclass(frozen=True)
class Recipe:
    """One example: which photo, which edit (kind and parameters), and which flaw its flawed edit has."""

    photo: str
    kind: str
    params: tuple[tuple[str, str], ...] = ()
    flaw: Flaw = "wrong_param"


RECIPES = (
    Recipe(HELDOUT_PHOTOS[0], "tint", (("colour", "blue"),)),
    Recipe(HELDOUT_PHOTOS[0], "flip_horizontal"),
    Recipe(HELDOUT_PHOTOS[1], "darken", flaw="wrong_op"),
)


def _source(photo: str, size: int) -> Image.Image:
    """The centre `size`×`size` crop of `photo`."""
    assert photo in HELDOUT_PHOTOS, f"{photo} is not held out from pretraining"
    return sample_source(random.Random(0), size=size, random_crop=False, photos=(photo,))[1]


def _flawed(recipe: Recipe, spec: EditSpec, source: Image.Image) -> EditSpec:
    """The single edit of the recipe's flawed candidate, drawn from a stream named after the recipe."""
    rng = random.Random(f"jrm-score-examples:{recipe.photo}:{recipe.kind}:{recipe.flaw}")
    edits = flaw_edits(recipe.flaw, spec, rng, colour_source=is_colour(source))
    if edits is None or len(edits) != 1:
        raise ValueError(f"{recipe.kind} has no single-edit {recipe.flaw} flaw; pick another flaw for it.")
    return edits[0]


def _check_visible(name: str, source: Image.Image, correct: Image.Image, flawed: Image.Image) -> None:
    if mean_abs_diff(correct, source) < MIN_EDIT_DIFF:
        raise ValueError(f"{name}: the correct edit barely changes the source; pick another photo or edit.")
    if min(mean_abs_diff(flawed, source), mean_abs_diff(flawed, correct)) < MIN_CANDIDATE_DIFF:
        raise ValueError(f"{name}: the flawed edit looks like the source or the correct edit; pick another flaw.")


def _save(image: Image.Image, folder: Path, name: str) -> str:
    image.save(folder / name, format="PNG", optimize=True)
    return name


def build_examples(out: Path, *, recipes: Sequence[Recipe] = RECIPES, size: int = DEFAULT_SIZE) -> list[dict]:
    """Write every recipe's PNGs and `examples.json` into `out`; the examples as listed in the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    examples = []
    for recipe in recipes:
        source = _source(recipe.photo, size)
        spec = EditSpec.of(recipe.kind, dict(recipe.params))
        flawed_spec = _flawed(recipe, spec, source)
        correct, flawed = spec.apply(source), flawed_spec.apply(source)
        stem = f"{recipe.photo}-{recipe.kind}"
        _check_visible(stem, source, correct, flawed)
        source_file = _save(source, out, f"{recipe.photo}.png")  # shared by the photo's examples and its no-ops
        examples.append({
            "photo": recipe.photo,
            "source": source_file,
            "instruction": EDIT_KINDS[recipe.kind].phrasings[0].format(**dict(recipe.params)),
            "edits": [
                {"file": _save(correct, out, f"{stem}-correct.png"), "kind": "correct", "did": spec.describe()},
                {"file": _save(flawed, out, f"{stem}-flawed.png"), "kind": f"flawed: {recipe.flaw}",
                 "did": flawed_spec.describe()},
                {"file": source_file, "kind": "no-op", "did": NO_OP_DID},
            ],
        })
    listing = {"about": __doc__.splitlines()[0], "size": size, "examples": examples}
    (out / EXAMPLES_FILE).write_text(json.dumps(listing, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return examples


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m trainer.score_examples", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("app/examples"), help="folder to write (default app/examples)")
    args = parser.parse_args(argv)
    examples = build_examples(args.out)
    total = sum(path.stat().st_size for path in args.out.iterdir() if path.is_file())
    print(f"wrote {len(examples)} examples to {args.out} ({total / 1024:.0f} KB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
