"""Score tab: a source image, an instruction and 1–4 edits in, a ranked score per edit out, stamped with the version.

Uploads arrive as files (`gr.File`), never decoded by Gradio: the bytes go through `storage.images.decode_upload`,
the store's own checks (size, signature, header-first pixel limits, truncation), before any pixel is decoded.
With the contributor's consent the upload also becomes an annotation task (origin "upload").

The tab's clickable examples are files shipped in `app/examples/` (built by `python -m trainer.score_examples` from
photos held out from pretraining) and listed in its `examples.json`; `load_examples` reads that listing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import pandas as pd
import PIL.Image

from app.auth import current_user
from app.deps import Deps
from app.handlers import user_errors
from app.render import error, text
from app.scoring import NoScorerYet, ScoredItem
from storage.db import transaction
from storage.errors import InvalidInput
from storage.images import decode_upload, store_image
from storage.repository import add_candidate, create_task
from storage.settings import Settings

log = logging.getLogger(__name__)

MAX_EDITS = 4
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES_FILE = "examples.json"
EDIT_NAME_CHARS = 60  # an edit's file name is shown in the results up to this length
# The serving version's floor verdict (`ScoredItem.passed_floor`) → the note beside its scores.
FLOOR_NOTES = {
    True: "{name} beats the accuracy floor: chance and the pixel-statistics rules, on held-out votes.",
    False: "{name} is below the accuracy floor: its scores are not yet meaningful.",
    None: "{name} was not checked against the accuracy floor: its scores may not be meaningful yet.",
}
UPLOAD_ORIGIN = "upload"
UPLOAD_GENERATOR = "user-upload-{}"  # candidates of a contributed upload, numbered in upload order
RESULT_COLUMNS = ["rank", "edit", "score", "version"]
SIGMA_COLUMN = "± σ"  # added after "score" when the version has an uncertainty head; its dimensions follow
SIGMA_NOTE = "<p>± σ: the model's uncertainty about a score (one standard deviation).</p>"


class ScoreView(NamedTuple):
    """The score tab's outputs."""

    table: pd.DataFrame  # RESULT_COLUMNS (and σ, dimension scores when the version has those heads), best first
    gallery: list[tuple[str, str]]  # (edited image file, caption), best first
    status: str  # HTML, escaped


LABEL_CHARS = 60  # Gradio 6 shows at most this many characters of an example's label


@dataclass(frozen=True)
class ScoreExample:
    """One clickable example: a source, an instruction and edits of it whose kinds are known, best first."""

    photo: str
    source: Path
    instruction: str
    edits: tuple[Path, ...]
    kinds: tuple[str, ...]  # per edit: "correct", "flawed: <flaw>" or "no-op"
    did: tuple[str, ...]  # per edit: what it did to the source, e.g. "tinted it orange"

    @property
    def label(self) -> str:
        """The example's caption on the page (Gradio cuts example labels after 60 characters)."""
        return f"{self.instruction} — {self.photo}"[:LABEL_CHARS]

    @property
    def breakdown(self) -> str:
        """What each edit is, in order: "1 correct · 2 flawed (tinted it orange) · 3 no-op"."""
        edits = [f"{i} {kind}" if kind in ("correct", "no-op") else f"{i} flawed ({did})"
                 for i, (kind, did) in enumerate(zip(self.kinds, self.did, strict=True), start=1)]
        return " · ".join(edits)

    def inputs(self) -> list[object]:
        """The values this example fills in: source, instruction, edits (the order of `score_edits`' inputs)."""
        return [str(self.source), self.instruction, [str(path) for path in self.edits]]


def load_examples(folder: Path = EXAMPLES_DIR) -> list[ScoreExample]:
    """The examples `folder/examples.json` lists; [] when it has none. A listed file that is missing is a ValueError."""
    listing = folder / EXAMPLES_FILE
    if not listing.is_file():
        log.warning("No Score tab examples: %s is missing (build it: python -m trainer.score_examples)", listing)
        return []
    examples = []
    for entry in json.loads(listing.read_text(encoding="utf-8"))["examples"]:
        edits = entry["edits"]
        example = ScoreExample(
            photo=entry["photo"],
            source=folder / entry["source"],
            instruction=entry["instruction"],
            edits=tuple(folder / edit["file"] for edit in edits),
            kinds=tuple(edit["kind"] for edit in edits),
            did=tuple(edit["did"] for edit in edits),
        )
        missing = [path.name for path in (example.source, *example.edits) if not path.is_file()]
        if missing or not 1 <= len(edits) <= MAX_EDITS:
            raise ValueError(f"{listing}: the example {example.instruction!r} names missing files {missing} or has "
                             f"{len(edits)} edits (1 to {MAX_EDITS}); rebuild it with python -m trainer.score_examples")
        examples.append(example)
    return examples


def _path(upload: object) -> str | None:
    """A `gr.File` value (a path, or an object with `.name` from older clients) as a path."""
    if upload is None or upload == "":
        return None
    return str(getattr(upload, "name", upload))


def _read(path: str, settings: Settings) -> bytes:
    # One byte over the limit is enough for the store's size check to refuse it with its own message.
    with Path(path).open("rb") as file:
        return file.read(settings.max_upload_bytes + 1)


def _decode(path: str, label: str, settings: Settings) -> tuple[bytes, PIL.Image.Image]:
    """(bytes, picture) of one upload; `gr.Error` naming the upload when the store would refuse it."""
    data = _read(path, settings)
    try:
        return data, decode_upload(data, settings=settings)
    except InvalidInput as exc:
        raise error(f"{label}: {exc}") from None


def _edit_paths(edits: Sequence[object] | object | None) -> list[str]:
    items = edits if isinstance(edits, list | tuple) else [edits]
    paths = [p for p in (_path(item) for item in items) if p]
    if not 1 <= len(paths) <= MAX_EDITS:
        raise error(f"Upload 1 to {MAX_EDITS} edited images (you uploaded {len(paths)}).")
    return paths


def score_edits(
    deps: Deps,
    source: object,
    instruction: str,
    edits: Sequence[object] | None,
    contribute: bool,
    request: gr.Request,
) -> ScoreView:
    """Score each uploaded edit with the active version, best first; optionally keep the upload as a task."""
    current_user(deps, request)  # refuses a deactivated account before anything is stored
    source_path = _path(source)
    if source_path is None:
        raise error("Upload the source image (the picture before editing).")
    if not (instruction or "").strip():
        raise error("Write the edit instruction, e.g. “make the sky purple”.")
    paths = _edit_paths(edits)
    source_bytes, source_picture = _decode(source_path, "Source image", deps.settings)
    uploads = [_decode(path, f"Edited image {i}", deps.settings) for i, path in enumerate(paths, start=1)]
    notes = []
    if contribute:
        notes.append(_contribute(deps, source_bytes, instruction, [data for data, _ in uploads]))
    try:
        scored = _score(deps, source_picture, instruction, [picture for _, picture in uploads])
    except NoScorerYet as exc:
        empty = pd.DataFrame(columns=RESULT_COLUMNS)
        return ScoreView(empty, [], " ".join([f"<p>{text(exc)}</p>", *notes]))
    return _ranked_view(paths, scored, notes)


def _ranked_view(paths: list[str], scored: list[ScoredItem], notes: list[str]) -> ScoreView:
    """The scores best first (± σ and the dimension scores when the version has those heads), each edit named by its
    place and file; the version and its floor verdict above."""
    ranked = sorted(enumerate(scored, start=1), key=lambda pair: -pair[1].score)
    names = [_edit_name(number, path) for number, path in enumerate(paths, start=1)]
    table = pd.DataFrame(
        [(rank, names[i - 1], round(item.score, 4), item.version_name) for rank, (i, item) in enumerate(ranked, 1)],
        columns=RESULT_COLUMNS,
    )
    _add_head_columns(table, [item for _, item in ranked])
    gallery = [(paths[i - 1], f"#{rank} · {names[i - 1]} · {_score_text(item)}")
               for rank, (i, item) in enumerate(ranked, 1)]
    version = scored[0]
    stamp = f"<p>Scored by model version <b>{text(version.version_name)}</b> (id {version.version_id}).</p>"
    floor = f"<p>{text(FLOOR_NOTES[version.passed_floor].format(name=version.version_name))}</p>"
    sigma = [SIGMA_NOTE] if version.sigma is not None else []
    return ScoreView(table, gallery, " ".join([stamp, floor, *sigma, *notes]))


def _score_text(item: ScoredItem) -> str:
    """"0.812 ± 0.120" (σ when the version has an uncertainty head), else "0.812"."""
    return f"{item.score:.3f}" if item.sigma is None else f"{item.score:.3f} ± {item.sigma:.3f}"


def _add_head_columns(table: pd.DataFrame, ranked: list[ScoredItem]) -> None:
    """σ after the score and one column per dimension score, when the version that scored has those heads."""
    if ranked and ranked[0].sigma is not None:
        table.insert(RESULT_COLUMNS.index("score") + 1, SIGMA_COLUMN, [round(item.sigma or 0.0, 4) for item in ranked])
    for name in (ranked[0].dimensions or {}) if ranked else {}:
        table[name.replace("_", " ")] = [round((item.dimensions or {}).get(name, float("nan")), 4) for item in ranked]


def _edit_name(number: int, path: str) -> str:
    """`edit 2 · photo.png`: the edit's place in the upload and its file's name (shortened)."""
    name = Path(path).name
    if len(name) > EDIT_NAME_CHARS:
        name = name[: EDIT_NAME_CHARS - 1] + "…"
    return f"edit {number} · {name}"


def _score(deps: Deps, source: PIL.Image.Image, instruction: str, edited: list[PIL.Image.Image]) -> list[ScoredItem]:
    if deps.scoring is None:
        raise NoScorerYet("No scorer runs in this app process; scores are not available.")
    with user_errors():
        return deps.scoring.score_upload(source=source, instruction=instruction, edited=edited)


def _contribute(deps: Deps, source: bytes, instruction: str, edits: list[bytes]) -> str:
    """Store the upload as a task with one candidate per edit; returns an HTML note."""
    if len(edits) < 2:
        return "<p>Not added for annotation: annotators compare two edits, so contribute at least two.</p>"
    with user_errors(), transaction(deps.factory) as session:
        source_image = store_image(session, data=source, settings=deps.settings)
        task = create_task(session, source_image_id=source_image.id, instruction=instruction,
                           origin=UPLOAD_ORIGIN, settings=deps.settings)
        for number, data in enumerate(edits, start=1):
            image = store_image(session, data=data, settings=deps.settings)
            add_candidate(session, task_id=task.id, image_id=image.id, generator=UPLOAD_GENERATOR.format(number))
        task_id = task.id
    return f"<p>Thank you: your upload is now task {task_id} for annotators.</p>"
