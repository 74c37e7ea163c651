"""Export the votes: a Hugging Face `datasets` dataset (save_to_disk or parquet), TRL-style pairs, EditReward JSON.

Exports only read the database and refuse to overwrite an existing path. Votes stream from the database
into an Arrow file in batches and image bytes are read row by row (a small cache holds repeated source
images), so memory grows with the number of rows' metadata, never with the images.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage import interchange as fmt
from storage.errors import InvalidInput
from storage.images import image_path
from storage.models import Candidate, Image, Task, User, Vote
from storage.provenance import ALL_VOTES, VoteSelection
from storage.settings import Settings

BATCH_ROWS = 128
_IMAGE_CACHE_SIZE = 256  # a task's source image repeats in every vote on it


@dataclass
class _Catalog:
    """Everything a vote refers to, loaded once (metadata only; image bytes are read on demand)."""

    tasks: dict[int, Task]
    candidates: dict[int, Candidate]
    images: dict[int, Image]
    annotators: dict[int, str]
    settings: Settings

    @classmethod
    def load(cls, session: Session, settings: Settings) -> _Catalog:
        def by_id(model):
            return {row.id: row for row in session.scalars(select(model))}

        annotators = {user.id: user.name for user in session.scalars(select(User))}
        return cls(by_id(Task), by_id(Candidate), by_id(Image), annotators, settings)

    @functools.cached_property
    def read_bytes(self) -> Callable[[int], bytes]:
        @functools.lru_cache(maxsize=_IMAGE_CACHE_SIZE)
        def read(image_id: int) -> bytes:
            path = image_path(self.settings, self.images[image_id])
            if not path.is_file():
                raise InvalidInput(f"the stored file of image {image_id} is missing: {path}")
            return path.read_bytes()

        return read

    def image_cell(self, image_id: int) -> dict[str, Any]:
        """A `datasets.Image` cell: the stored bytes, named by content."""
        image = self.images[image_id]
        return {"bytes": self.read_bytes(image_id), "path": f"{image.sha256}.{image.format}"}


def _votes(session: Session, selection: VoteSelection) -> Iterator[Vote]:
    query = select(Vote).where(*selection.where()).order_by(Vote.id)
    yield from session.scalars(query.execution_options(yield_per=BATCH_ROWS))


def _iso(vote: Vote) -> str | None:
    return vote.created_at.isoformat() if vote.created_at else None


def _refuse_existing(out: Path) -> None:
    if out.exists():
        raise InvalidInput(f"{out} already exists; choose a new path or remove it first")


# --- datasets -----------------------------------------------------------------------------------------------


def _side(catalog: _Catalog, side: str, candidate_id: int) -> dict[str, Any]:
    candidate = catalog.candidates[candidate_id]
    return {
        f"{side}_image": catalog.image_cell(candidate.image_id),
        f"{side}_sha256": catalog.images[candidate.image_id].sha256,
        f"{side}_generator": candidate.generator,
        f"{side}_extra": fmt.dumps_or_none(candidate.extra),
    }


def _vote_row(catalog: _Catalog, vote: Vote) -> dict[str, Any]:
    """One vote as a row of `interchange.VOTE_FEATURES`."""
    task = catalog.tasks[vote.task_id]
    return {
        "vote_id": vote.id,
        "client_submission_id": vote.client_submission_id,
        "vote_origin": vote.origin,
        "created_at": _iso(vote),
        "task_id": task.id,
        "task_external_id": task.external_id,
        "task_origin": task.origin,
        "category": task.category,
        "instruction": task.instruction,
        "source_image": catalog.image_cell(task.source_image_id),
        "source_sha256": catalog.images[task.source_image_id].sha256,
        **_side(catalog, "left", vote.left_candidate_id),
        **_side(catalog, "right", vote.right_candidate_id),
        "choice": vote.choice,
        "rationale": vote.rationale,
        "dimension_scores": fmt.dumps_or_none(vote.dimension_scores),
        "annotator": catalog.annotators.get(vote.annotator_id) if vote.annotator_id else None,
        "time_spent_ms": vote.time_spent_ms,
    }


def _trl_row(row: dict[str, Any]) -> dict[str, Any]:
    """A vote row as a TRL-style pair: the chosen side is left unless the vote chose right."""
    chosen, rejected = ("right", "left") if row["choice"] == "right" else ("left", "right")
    return {
        "prompt": row["instruction"],
        "images": [row["source_image"], row[f"{chosen}_image"], row[f"{rejected}_image"]],
        "chosen": row[f"{chosen}_generator"],
        "rejected": row[f"{rejected}_generator"],
        "choice": row["choice"],
        "rationale": row["rationale"],
        "chosen_sha256": row[f"{chosen}_sha256"],
        "rejected_sha256": row[f"{rejected}_sha256"],
        "task_id": row["task_id"],
        "vote_id": row["vote_id"],
    }


def _batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_dataset(rows: Iterable[dict[str, Any]], features, out: Path, *, parquet: bool) -> int:
    """Stream `rows` into an Arrow file, then save it as `out` (save_to_disk folder or parquet file)."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".jrm-export-", dir=out.parent) as scratch:
        arrow_path = os.path.join(scratch, "votes.arrow")
        with ArrowWriter(features=features, path=arrow_path) as writer:
            for batch in _batches(rows):
                columns = {name: [row[name] for row in batch] for name in features}
                writer.write_batch(features.encode_batch(columns))
            writer.finalize()
        dataset = datasets.Dataset.from_file(arrow_path)
        if parquet:
            dataset.to_parquet(str(out))
        else:
            dataset.save_to_disk(str(out))
        count = dataset.num_rows
        del dataset  # release the memory map before the scratch folder goes
    return count


def export_hf(
    session: Session, *, out: Path, settings: Settings, parquet: bool = False, selection: VoteSelection = ALL_VOTES
) -> int:
    """Write one row per vote (images embedded) as a save_to_disk folder, or a parquet file; returns the count."""
    catalog = _Catalog.load(session, settings)
    rows = (_vote_row(catalog, vote) for vote in _votes(session, selection))
    return _write_dataset(rows, fmt.VOTE_FEATURES, out, parquet=parquet)


def export_trl(session: Session, *, out: Path, settings: Settings, selection: VoteSelection = ALL_VOTES) -> int:
    """Write TRL-style pairs; `out` ending in .parquet gives a parquet file, else a save_to_disk folder."""
    catalog = _Catalog.load(session, settings)
    rows = (_trl_row(_vote_row(catalog, vote)) for vote in _votes(session, selection))
    return _write_dataset(rows, fmt.TRL_FEATURES, out, parquet=out.suffix == ".parquet")


# --- EditReward JSON ----------------------------------------------------------------------------------------


def _write_image(catalog: _Catalog, image_id: int, images_dir: Path) -> str:
    """Copy the stored bytes to `images_dir/<sha256>.<ext>` (once) and return that relative name."""
    image = catalog.images[image_id]
    name = f"{image.sha256}.{image.format}"
    target = images_dir / name
    if not target.is_file() or target.stat().st_size != image.byte_size:
        _write_atomically(target, catalog.read_bytes(image_id))
    return name


def _editreward_record(catalog: _Catalog, vote: Vote, images_dir: Path) -> dict[str, Any]:
    """One vote as an EditReward record: path1 is the chosen edit (left for tie and both_bad)."""
    task = catalog.tasks[vote.task_id]
    flipped = vote.choice == "right"
    first, second = (vote.right_candidate_id, vote.left_candidate_id) if flipped else (
        vote.left_candidate_id, vote.right_candidate_id)
    record: dict[str, Any] = {
        "prompt": task.instruction,
        "path_src": _write_image(catalog, task.source_image_id, images_dir),
        "path1": _write_image(catalog, catalog.candidates[first].image_id, images_dir),
        "path2": _write_image(catalog, catalog.candidates[second].image_id, images_dir),
        "model1": catalog.candidates[first].generator,
        "model2": catalog.candidates[second].generator,
        **_model_scores(catalog, first, "model1_"),
        **_model_scores(catalog, second, "model2_"),
        "tie_case": vote.choice in ("tie", "both_bad"),
    }
    optional = {
        "both_bad": True if vote.choice == "both_bad" else None,
        "path1_side": "right" if flipped else None,  # as shown: rationales may say "left"/"right"
        "rationale": vote.rationale,
        "annotator": catalog.annotators.get(vote.annotator_id) if vote.annotator_id else None,
        "category": task.category,
        "external_id": task.external_id,
        "origin": vote.origin,
        "task_origin": task.origin,
        "dimension_scores": vote.dimension_scores or None,
        "time_spent_ms": vote.time_spent_ms,
        "created_at": _iso(vote),
        "client_submission_id": vote.client_submission_id,
        "extra1": _other_extra(catalog, first),
        "extra2": _other_extra(catalog, second),
    }
    record.update({key: value for key, value in optional.items() if value is not None})
    return record


def _model_scores(catalog: _Catalog, candidate_id: int, prefix: str) -> dict[str, Any]:
    """Candidate.extra's EditReward per-model keys, prefixed again (`dim1_score` → `model1_dim1_score`)."""
    scores = (catalog.candidates[candidate_id].extra or {}).get(fmt.EXTRAS_KEY)
    return {prefix + key: value for key, value in scores.items()} if isinstance(scores, dict) else {}


def _other_extra(catalog: _Catalog, candidate_id: int) -> dict[str, Any] | None:
    """The rest of Candidate.extra (e.g. the demo's flaw labels), which EditReward has no key for."""
    extra = catalog.candidates[candidate_id].extra or {}
    rest = {key: value for key, value in extra.items() if key != fmt.EXTRAS_KEY or not isinstance(value, dict)}
    return rest or None


def export_editreward(
    session: Session, *, out: Path, images_dir: Path, settings: Settings, selection: VoteSelection = ALL_VOTES
) -> int:
    """Write the votes as an EditReward-Data JSON list, images under `images_dir` by sha256; returns the count."""
    _refuse_existing(out)
    images_dir.mkdir(parents=True, exist_ok=True)
    catalog = _Catalog.load(session, settings)
    records = [_editreward_record(catalog, vote, images_dir) for vote in _votes(session, selection)]
    text = json.dumps(records, ensure_ascii=False, indent=1)
    _write_atomically(out, text.encode("utf-8"))
    return len(records)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".incoming-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
