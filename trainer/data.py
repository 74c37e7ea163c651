"""Votes → a frozen `datasets.Dataset` snapshot per run, the task-level held-out split, and the pair collator.

A run trains on a **snapshot**: one row per vote (ids, a stable task key, the split, the instruction, the content
addresses and paths of the three images, the candidates' extras as JSON, the choice and the rationale), saved with
`save_to_disk` beside the run together with its fingerprint (sha256 of the rows' content) and watermark (the
highest vote id). Re-training from the saved folder sees exactly the same rows; images are read through their
content-addressed blob paths, which never change content.

The **held-out split** is by task content, not by vote or row id: `task_key = sha256(source sha256 + "\\n" +
instruction)` and a task is held out when the key, read as a number in [0, 1), is below `HELDOUT_FRACTION`. A task
never changes side as votes arrive, every version is judged on the same tasks, and no task is in both splits.

Training pairs are oriented for the loss: the winner is `chosen`, the loser `rejected`; *tie* and *both bad*
votes keep the left candidate (as shown) in the chosen slot and are marked `is_tie`. The rationale conditions the
chosen candidate's sequence (docs/method.md §2). `PairCollator` puts every chosen sequence first and every
rejected one after it into one `Batch`: `rewards[:B]` are chosen, `rewards[B:]` rejected, one forward per step.
See docs/training.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import PIL.Image
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from torch.utils.data import Dataset
from transformers import ProcessorMixin

from storage.errors import InvalidInput
from storage.images import image_path
from storage.models import Candidate, Image
from storage.provenance import ALL_VOTES, VoteSelection
from storage.settings import Settings
from storage.stats import training_votes
from trainer.heads import dimension_labels
from trainer.prompting import Batch, PromptExample, build_example, collate

if TYPE_CHECKING:
    from trainer.evaluate import EvalPair

SNAPSHOT_FORMAT = 1
SNAPSHOT_META = "jrm_snapshot.json"
HELDOUT_FRACTION = 0.15  # frozen: changing it moves tasks between splits and breaks comparisons of versions
TRAIN, HELDOUT = "train", "heldout"
TIE_CHOICES = ("tie", "both_bad")
IMAGE_CACHE_SIZE = 256  # decoded pictures kept per dataset; a task's source appears in every vote on it
_LOOKUP_CHUNK = 500  # ids per IN (...) query

_STRING, _INT = datasets.Value("string"), datasets.Value("int64")
FEATURES = datasets.Features(
    {
        "vote_id": _INT,
        "task_id": _INT,
        "task_key": _STRING,
        "split": _STRING,
        "instruction": _STRING,
        "source_sha256": _STRING,
        "source_path": _STRING,
        "left_candidate_id": _INT,
        "left_sha256": _STRING,
        "left_path": _STRING,
        "left_generator": _STRING,
        "left_extra": _STRING,  # JSON text ("null" when the candidate has none)
        "right_candidate_id": _INT,
        "right_sha256": _STRING,
        "right_path": _STRING,
        "right_generator": _STRING,
        "right_extra": _STRING,
        "choice": _STRING,
        "rationale": _STRING,  # None when the annotator wrote none
        "annotator_id": _INT,  # None for imported votes
        "dimension_scores": _STRING,  # JSON text {name: -2 … 2} as shown; None when not rated (absent before)
    }
)
_PATH_KEYS = ("source_path", "left_path", "right_path")  # left out of the fingerprint: the data folder may move
_OPTIONAL_KEYS = ("dimension_scores",)  # left out of the fingerprint when None: older snapshots keep theirs


# --- the split -------------------------------------------------------------------------------------------------


def task_key(source_sha256: str, instruction: str) -> str:
    """A stable id of a task's content: sha256 of the source image's sha256 and the instruction."""
    return hashlib.sha256(f"{source_sha256}\n{instruction}".encode()).hexdigest()


def split_of(key: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """The split of a task: `HELDOUT` when its key, read as a number in [0, 1), is below the fraction."""
    return HELDOUT if int(key[:16], 16) / 2**64 < heldout_fraction else TRAIN


# --- reading votes ---------------------------------------------------------------------------------------------


def _chunks(ids: Iterable[int]) -> Iterable[list[int]]:
    unique = sorted(set(ids))
    for start in range(0, len(unique), _LOOKUP_CHUNK):
        yield unique[start : start + _LOOKUP_CHUNK]


def _images_by_id(session: Session, ids: Iterable[int]) -> dict[int, Image]:
    found: dict[int, Image] = {}
    for chunk in _chunks(ids):
        found.update({image.id: image for image in session.scalars(select(Image).where(Image.id.in_(chunk)))})
    return found


def _extras_by_id(session: Session, ids: Iterable[int]) -> dict[int, Any]:
    found: dict[int, Any] = {}
    for chunk in _chunks(ids):
        found.update(session.execute(select(Candidate.id, Candidate.extra).where(Candidate.id.in_(chunk))).all())
    return found


def vote_rows(
    session: Session,
    *,
    settings: Settings,
    heldout_fraction: float = HELDOUT_FRACTION,
    limit: int | None = None,
    selection: VoteSelection = ALL_VOTES,
) -> list[dict[str, Any]]:
    """The selected votes as snapshot rows (ordered by vote id), with their tasks' split."""
    votes = training_votes(session, limit=limit, selection=selection)
    images = _images_by_id(session, (i for v in votes for i in (v.source_image_id, v.left_image_id, v.right_image_id)))
    extras = _extras_by_id(session, (i for v in votes for i in (v.left_candidate_id, v.right_candidate_id)))
    rows = []
    for vote in votes:
        source, left, right = images[vote.source_image_id], images[vote.left_image_id], images[vote.right_image_id]
        key = task_key(source.sha256, vote.instruction)
        rows.append(
            {
                "vote_id": vote.vote_id,
                "task_id": vote.task_id,
                "task_key": key,
                "split": split_of(key, heldout_fraction),
                "instruction": vote.instruction,
                "source_sha256": source.sha256,
                "source_path": str(image_path(settings, source).resolve()),
                "left_candidate_id": vote.left_candidate_id,
                "left_sha256": left.sha256,
                "left_path": str(image_path(settings, left).resolve()),
                "left_generator": vote.left_generator,
                "left_extra": json.dumps(extras.get(vote.left_candidate_id), sort_keys=True),
                "right_candidate_id": vote.right_candidate_id,
                "right_sha256": right.sha256,
                "right_path": str(image_path(settings, right).resolve()),
                "right_generator": vote.right_generator,
                "right_extra": json.dumps(extras.get(vote.right_candidate_id), sort_keys=True),
                "choice": vote.choice,
                "rationale": vote.rationale,
                "annotator_id": vote.annotator_id,
                "dimension_scores": _json_or_none(vote.dimension_scores),
            }
        )
    return rows


def _json_or_none(value: Any) -> str | None:
    """JSON text of a vote's dimension scores (as shown: negative = left better); None when it has none."""
    return None if not value else json.dumps(value, sort_keys=True)


# --- snapshots -------------------------------------------------------------------------------------------------


def rows_fingerprint(rows: Iterable[dict[str, Any]]) -> str:
    """sha256 of the rows' content (image paths excluded: the same votes in a moved data folder match)."""
    digest = hashlib.sha256(f"jrm-snapshot-{SNAPSHOT_FORMAT}\n".encode())
    for row in rows:
        content = {k: v for k, v in row.items() if k not in _PATH_KEYS and not (k in _OPTIONAL_KEYS and v is None)}
        digest.update(json.dumps(content, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """A run's frozen votes: the dataset (all splits), where it is saved, its fingerprint and watermark."""

    dataset: datasets.Dataset
    path: Path | None
    fingerprint: str
    watermark: int  # the highest vote id in the snapshot; 0 when it is empty
    heldout_fraction: float

    def split(self, name: str) -> datasets.Dataset:
        """The rows of one split ("train" or "heldout"), in vote-id order."""
        if name not in (TRAIN, HELDOUT):
            raise ValueError(f"split must be {TRAIN!r} or {HELDOUT!r}, got {name!r}.")
        return self.dataset.select([i for i, s in enumerate(self.dataset["split"]) if s == name])

    def counts(self) -> dict[str, int]:
        """Votes per split, and the number of distinct tasks in each."""
        splits, keys = self.dataset["split"], self.dataset["task_key"]
        counts = {f"{name}_votes": splits.count(name) for name in (TRAIN, HELDOUT)}
        for name in (TRAIN, HELDOUT):
            counts[f"{name}_tasks"] = len({k for k, s in zip(keys, splits, strict=True) if s == name})
        return counts


def make_snapshot(rows: list[dict[str, Any]], *, heldout_fraction: float = HELDOUT_FRACTION) -> Snapshot:
    """An in-memory snapshot of `rows` (not saved)."""
    dataset = datasets.Dataset.from_list(rows, features=FEATURES) if rows else _empty_dataset()
    watermark = max((row["vote_id"] for row in rows), default=0)
    return Snapshot(dataset, None, rows_fingerprint(rows), watermark, heldout_fraction)


def _empty_dataset() -> datasets.Dataset:
    return datasets.Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)


def save_snapshot(snapshot: Snapshot, folder: str | Path) -> Snapshot:
    """Write the dataset (`save_to_disk`) and its metadata to `folder`; returns the snapshot with its path."""
    folder = Path(folder)
    if len(snapshot.dataset) == 0:
        raise InvalidInput("There are no votes to snapshot yet: collect votes (or build the demo data) first.")
    if (folder / SNAPSHOT_META).exists():
        raise InvalidInput(f"{folder} already holds a snapshot; load it with load_snapshot() or pick a new folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    snapshot.dataset.save_to_disk(str(folder))
    meta = {
        "format": SNAPSHOT_FORMAT,
        "fingerprint": snapshot.fingerprint,
        "watermark": snapshot.watermark,
        "heldout_fraction": snapshot.heldout_fraction,
        "rows": len(snapshot.dataset),
    }
    (folder / SNAPSHOT_META).write_text(json.dumps(meta, indent=2))  # written last: its presence means complete
    return Snapshot(snapshot.dataset, folder, snapshot.fingerprint, snapshot.watermark, snapshot.heldout_fraction)


def snapshot_votes(
    session: Session, *, settings: Settings, folder: str | Path, heldout_fraction: float = HELDOUT_FRACTION
) -> Snapshot:
    """Read every vote from the store and save it as a snapshot in `folder`."""
    return save_snapshot(
        make_snapshot(
            vote_rows(session, settings=settings, heldout_fraction=heldout_fraction), heldout_fraction=heldout_fraction
        ),
        folder,
    )


def load_snapshot(folder: str | Path) -> Snapshot:
    """A saved snapshot, its fingerprint re-checked against the rows."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / SNAPSHOT_META).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{folder} is not a complete training snapshot ({SNAPSHOT_META}: {exc}).") from None
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise InvalidInput(f"{folder} has snapshot format {meta.get('format')}; this code reads {SNAPSHOT_FORMAT}.")
    dataset = datasets.load_from_disk(str(folder))
    fingerprint = rows_fingerprint(dataset.to_list())
    if fingerprint != meta["fingerprint"]:
        raise InvalidInput(f"{folder}: the rows do not match the recorded fingerprint; the snapshot was modified.")
    return Snapshot(dataset, folder, fingerprint, int(meta["watermark"]), float(meta["heldout_fraction"]))


# --- images ----------------------------------------------------------------------------------------------------


class ImageCache:
    """Decoded RGB pictures by path, least recently used dropped first."""

    def __init__(self, capacity: int = IMAGE_CACHE_SIZE):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}.")
        self.capacity = capacity
        self._images: OrderedDict[str, PIL.Image.Image] = OrderedDict()

    def __len__(self) -> int:
        return len(self._images)

    def get(self, path: str) -> PIL.Image.Image:
        """The picture at `path` (decoded once while it stays in the cache); callers must not modify it."""
        image = self._images.get(path)
        if image is not None:
            self._images.move_to_end(path)
            return image
        try:
            with PIL.Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as exc:
            raise InvalidInput(f"Snapshot image {path} cannot be read ({exc}); is the data folder complete?") from None
        self._images[path] = image
        if len(self._images) > self.capacity:
            self._images.popitem(last=False)
        return image


# --- orientation and rationales --------------------------------------------------------------------------------

# "left"/"right" naming a candidate, not a direction, a corner or "the right thing": never after "top", "bottom",
# "to" or a closing quote ('got "..." right'), never before "to", "thing", "way", "side", "hand" or "corner".
_SIDE_WORDS = re.compile(
    r"(?<![Tt]op )(?<![Bb]ottom )(?<![Tt]o )\b(?:[Tt]he )?(?P<side>[Ll]eft|[Rr]ight)"
    r"(?: (?:one|edit|image|candidate))?\b(?! (?:to|thing|way|side|hand|corner)\b)"
)
_AFTER_QUOTE = re.compile(r"\s*(?:right|left)\b")


def chosen_side(choice: str) -> str:
    """Which candidate as shown fills the chosen slot: the winner, or the left one for tie / both bad."""
    if choice == "right":
        return "right"
    if choice in ("left", *TIE_CHOICES):
        return "left"
    raise ValueError(f"unknown vote choice {choice!r}; expected left, right, tie or both_bad.")


def neutral_rationale(rationale: str, side: str) -> str:
    """Rewrite "left"/"right" naming a candidate to "this edit"/"the other edit", seen from `side`.

    The chosen sequence shows one edit, so the side it was shown on is not predictable from the input; "this
    edit" keeps the rationale's tokens about what the shown edit did. Quoted text (an instruction) is left as is.
    """

    def replace(match: re.Match[str]) -> str:
        word = "this edit" if match["side"].lower() == side else "the other edit"
        return word[0].upper() + word[1:] if match[0][0].isupper() else word

    def rewrite(part: str, after_quote: bool) -> str:
        kept = _AFTER_QUOTE.match(part) if after_quote else None
        head = kept[0] if kept else ""
        return head + _SIDE_WORDS.sub(replace, part[len(head) :])

    parts = rationale.split('"')  # odd parts are quoted
    return '"'.join(rewrite(part, i > 0) if i % 2 == 0 else part for i, part in enumerate(parts))


# --- the torch dataset and the collator ------------------------------------------------------------------------


@dataclass
class PairExample:
    """One vote as two encoded sequences; the rationale (if any) is on `chosen`."""

    chosen: PromptExample
    rejected: PromptExample
    is_tie: bool
    dimension_labels: tuple[int | None, ...] = ()  # per `JRMConfig.dimension_heads` name, see heads.dimension_labels


@dataclass
class PairBatch:
    """`batch` holds 2B sequences, the B chosen first; `is_tie` (B,) marks tie and both-bad votes; per dimension
    `dimension_labels` (B, D) is +1 / -1 / 0 (chosen better / rejected better / the same) where `dimension_mask`."""

    batch: Batch
    is_tie: torch.Tensor  # (B,) bool
    dimension_labels: torch.Tensor | None = None  # (B, D) int64; None: the model has no dimension heads
    dimension_mask: torch.Tensor | None = None  # (B, D) bool: False where the vote did not rate the dimension

    def __len__(self) -> int:
        return int(self.is_tie.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PairBatch:
        """The same pairs on `device`."""
        labels, mask = self.dimension_labels, self.dimension_mask
        return PairBatch(
            self.batch.to(device),
            self.is_tie.to(device, non_blocking=non_blocking),
            None if labels is None else labels.to(device, non_blocking=non_blocking),
            None if mask is None else mask.to(device, non_blocking=non_blocking),
        )


class PairDataset(Dataset):
    """Snapshot rows → `PairExample`s, encoded with `build_example` on demand; decoded images are cached."""

    def __init__(
        self,
        rows: datasets.Dataset | Sequence[dict[str, Any]],
        processor: ProcessorMixin,
        *,
        max_rationale_tokens: int = 128,
        neutral_sides: bool = True,
        rationale_on: str = "chosen",
        cache: ImageCache | None = None,
        dimensions: tuple[str, ...] = (),
    ):
        if rationale_on not in ("chosen", "both"):
            raise ValueError(f"rationale_on must be 'chosen' or 'both', got {rationale_on!r}.")
        if rationale_on == "both" and not neutral_sides:
            raise ValueError("rationale_on='both' needs neutral_sides: only then does each sequence get its own view.")
        self.rows = rows.to_list() if isinstance(rows, datasets.Dataset) else list(rows)
        self.processor = processor
        self.max_rationale_tokens = max_rationale_tokens
        self.neutral_sides = neutral_sides
        self.rationale_on = rationale_on
        self.cache = cache or ImageCache()
        self.dimensions = tuple(dimensions)  # names read from each row's dimension_scores (the model's heads)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> PairExample:
        row = self.rows[index]
        winner = chosen_side(row["choice"])
        loser = "right" if winner == "left" else "left"
        rationale, rejected_rationale = row["rationale"], None
        if rationale and self.neutral_sides:
            if self.rationale_on == "both":
                rejected_rationale = neutral_rationale(rationale, loser)
            rationale = neutral_rationale(rationale, winner)
        source = self.cache.get(row["source_path"])
        chosen = self._encode(source, row[f"{winner}_path"], row["instruction"], rationale)
        rejected = self._encode(source, row[f"{loser}_path"], row["instruction"], rejected_rationale)
        dims = dimension_labels(row.get("dimension_scores"), self.dimensions, winner) if self.dimensions else ()
        return PairExample(chosen, rejected, is_tie=row["choice"] in TIE_CHOICES, dimension_labels=dims)

    def _encode(self, source: PIL.Image.Image, path: str, instruction: str, rationale: str | None) -> PromptExample:
        return build_example(
            self.processor,
            source=source,
            edited=self.cache.get(path),
            instruction=instruction,
            rationale=rationale,
            max_rationale_tokens=self.max_rationale_tokens,
        )


class PairCollator:
    """`PairExample`s → one `PairBatch` (chosen sequences, then rejected ones) for a single forward."""

    def __init__(self, processor: ProcessorMixin):
        self.processor = processor

    def __call__(self, examples: Sequence[PairExample]) -> PairBatch:
        if not examples:
            raise ValueError("PairCollator needs at least one pair.")
        sequences = [ex.chosen for ex in examples] + [ex.rejected for ex in examples]  # 2B
        is_tie = torch.tensor([ex.is_tie for ex in examples], dtype=torch.bool)  # (B,)
        labels = mask = None
        if examples[0].dimension_labels:
            raw = [ex.dimension_labels for ex in examples]  # B tuples of D labels or None
            labels = torch.tensor([[label or 0 for label in row] for row in raw], dtype=torch.long)  # (B, D)
            mask = torch.tensor([[label is not None for label in row] for row in raw], dtype=torch.bool)  # (B, D)
        return PairBatch(collate(sequences, self.processor), is_tie, labels, mask)


# --- held-out pairs for evaluation -----------------------------------------------------------------------------


def eval_pairs(rows: datasets.Dataset | Sequence[dict[str, Any]], *, cache: ImageCache | None = None) -> list[EvalPair]:
    """Snapshot rows as `trainer.evaluate.EvalPair`s (images decoded; left/right as shown; the vote's label)."""
    from trainer.evaluate import EvalPair  # lazy: evaluation pulls in the metrics only when used

    cache = cache or ImageCache()
    rows = rows.to_list() if isinstance(rows, datasets.Dataset) else rows
    return [
        EvalPair(
            task_id=row["task_id"],
            task_key=row["task_key"],
            instruction=row["instruction"],
            source=cache.get(row["source_path"]),
            left=cache.get(row["left_path"]),
            right=cache.get(row["right_path"]),
            label=row["choice"],
            left_candidate_id=row["left_candidate_id"],
            right_candidate_id=row["right_candidate_id"],
            left_extra=json.loads(row["left_extra"]),
            right_extra=json.loads(row["right_extra"]),
            dimension_scores=json.loads(row.get("dimension_scores") or "null"),
        )
        for row in rows
    ]
