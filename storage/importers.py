"""Import EditReward-Data JSON, a folder layout, or a Hugging Face `datasets` dataset into the store.

Each import takes the session and never commits: the caller runs it in one transaction, so a file refused
at row N leaves the database as it was. Errors name the row (1-based) and the reason. Every row is checked and
every blob written before the first statement (`storage.import_writer`): the transaction only runs a few bulk
INSERTs, so annotators' votes wait for it briefly rather than for the whole import. Tasks are deduplicated
by (source image, instruction), candidates by (task, image, generator), and every vote carries a
deterministic `client_submission_id`, so importing the same data twice adds nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy.orm import Session

from storage import interchange as fmt
from storage.errors import InvalidInput
from storage.images import StoredBlob
from storage.import_writer import ImportPlan, write_plan
from storage.interchange import ImportSummary
from storage.models import CHOICES, SOURCE_MAX_CHARS
from storage.settings import Settings
from storage.validation import clean_text


@dataclass
class VoteInput:
    """One vote to import, its images' blobs already written."""

    source: StoredBlob
    instruction: str
    left: tuple[StoredBlob, str]  # (image, generator)
    right: tuple[StoredBlob, str]
    choice: str
    client_submission_id: str
    origin: str
    task_origin: str
    category: str | None = None
    external_id: str | None = None
    rationale: str | None = None
    annotator: str | None = None
    dimension_scores: dict[str, Any] | None = None
    time_spent_ms: int | None = None
    extras: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)  # Candidate.extra per side
    created_at: datetime | None = None


def source_name(path: Path) -> str:
    """How an import's file or folder is recorded on its rows: the resolved path, cut to the column's width."""
    name = str(path.resolve())
    return name if len(name) <= SOURCE_MAX_CHARS else "…" + name[-(SOURCE_MAX_CHARS - 1):]


def _at_row(where: str, run, *args):
    """Call `run(*args)`, prefixing any InvalidInput (ImageRejected, NotFound …) with `where`, e.g. "row 3"."""
    try:
        return run(*args)
    except InvalidInput as exc:
        raise type(exc)(f"{where}: {exc}") from None


# --- shared field checks ------------------------------------------------------------------------------------


def _text(record: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    """A name or instruction, cleaned as the repository stores it (so lookups match) and stripped."""
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not clean_text(value).strip():
        raise InvalidInput(f"'{key}' must be a non-empty string, got {value!r:.80}")
    return clean_text(value).strip()


def _optional_text(record: Mapping[str, Any], key: str) -> str | None:
    """A free-text field kept verbatim (the repository normalises it); absent or null is None."""
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"'{key}' must be a string, got {value!r}")
    return value


def _optional_int(record: Mapping[str, Any], key: str) -> int | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"'{key}' must be an integer, got {value!r}")
    return value


def _optional_dict(record: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = record.get(key)
    if isinstance(value, str):  # JSON text, as the datasets export writes it
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"'{key}' is not valid JSON ({exc.msg})") from None
    if value is not None and not isinstance(value, dict):
        raise InvalidInput(f"'{key}' must be an object, got {value!r}")
    return value


def _choice(value: Any) -> str:
    if value not in CHOICES:
        raise InvalidInput(f"'choice' must be one of {', '.join(CHOICES)}, got {value!r}")
    return value


def _relative_file(root: Path, value: str, key: str) -> Path:
    """`root / value`, refusing absolute paths and '..' so a file cannot point outside its folder."""
    relative = PurePosixPath(value.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise InvalidInput(f"'{key}' must be a path inside the images root, got {value!r}")
    return root / relative


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None


# --- EditReward-Data JSON -----------------------------------------------------------------------------------


def import_editreward(session: Session, *, path: Path, images_root: Path, settings: Settings) -> ImportSummary:
    """Import an EditReward-Data JSON list; image paths are relative to `images_root`."""
    records = _read_json(path)
    if not isinstance(records, list):
        raise InvalidInput(f"{path}: expected a JSON list of records, got a JSON {type(records).__name__}")
    if not images_root.is_dir():
        raise FileNotFoundError(f"images root {images_root} is not a folder")
    with ImportPlan(settings, source_file=source_name(path)) as importer:
        importer.prefetch(_editreward_files(records, images_root))
        for row, record in enumerate(records, start=1):
            importer.row = f"{path.name} row {row}"
            _at_row(importer.row, _editreward_record, importer, record, images_root)
            importer.summary.rows += 1
    return _write(session, importer)


def _editreward_files(records: list[Any], images_root: Path) -> Iterator[Path]:
    """The image files the records name, in order; what is malformed is left to the row's own checks."""
    for record in records:
        for key in ("path_src", "path1", "path2"):
            value = record.get(key) if isinstance(record, dict) else None
            if isinstance(value, str) and clean_text(value).strip():
                try:
                    yield _relative_file(images_root, clean_text(value).strip(), key)
                except InvalidInput:
                    pass


def _write(session: Session, importer: ImportPlan) -> ImportSummary:
    """Phase two: the blobs' folders synced, then the rows inserted in the caller's transaction."""
    importer.sync()
    return write_plan(session, importer)


def _tie_case(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise InvalidInput(f"'tie_case' must be true/false or 0/1, got {value!r}")


def _editreward_choice(record: Mapping[str, Any]) -> str:
    tie = _tie_case(record.get("tie_case"))
    if record.get("both_bad") not in (None, False, True):
        raise InvalidInput(f"'both_bad' must be true or false, got {record['both_bad']!r}")
    if record.get("both_bad"):
        if not tie:
            raise InvalidInput("'both_bad' is true but 'tie_case' is not; a both-bad vote is exported as a tie")
        return "both_bad"
    return "tie" if tie else "left"


def _editreward_record(importer: ImportPlan, record: Any, images_root: Path) -> None:
    if not isinstance(record, dict):
        raise InvalidInput(f"expected a JSON object, got {type(record).__name__}")
    missing = [key for key in fmt.EDITREWARD_REQUIRED if key not in record]
    if missing:
        raise InvalidInput(f"missing key {', '.join(repr(k) for k in missing)}")
    choice = _editreward_choice(record)
    images = [_editreward_image(importer, record, key, images_root) for key in ("path_src", "path1", "path2")]
    extras = {k: v for k, v in record.items() if k not in fmt.EDITREWARD_CORE and k not in fmt.EDITREWARD_JRM_KEYS}
    scores, rest = _split_model_scores(extras)
    for key in (k for k, v in rest.items() if v is not None):
        importer.summary.dropped_keys[key] = importer.summary.dropped_keys.get(key, 0) + 1
    sides = [(images[n], _text(record, f"model{n}"), _candidate_extra(record, n, scores[n - 1])) for n in (1, 2)]
    if _path1_side(record) == "right":  # our export: the chosen edit had been shown on the right
        sides.reverse()
        choice = "right" if choice == "left" else choice
    item = VoteInput(
        source=images[0], instruction=_text(record, "prompt"), left=sides[0][:2], right=sides[1][:2],
        choice=choice, client_submission_id="",
        origin=_text(record, "origin", required=False) or fmt.EDITREWARD_ORIGIN,
        task_origin=_text(record, "task_origin", required=False) or fmt.EDITREWARD_ORIGIN,
        category=_text(record, "category", required=False),
        external_id=_text(record, "external_id", required=False) or record["path_src"][:255],
        rationale=_optional_text(record, "rationale"), annotator=_text(record, "annotator", required=False),
        dimension_scores=_optional_dict(record, "dimension_scores"),
        time_spent_ms=_optional_int(record, "time_spent_ms"),
        extras=(sides[0][2], sides[1][2]), created_at=_optional_time(record, "created_at"),
    )
    item.client_submission_id = _text(record, "client_submission_id", required=False) or _derived_id(item, rest)
    importer.vote(item)


def _path1_side(record: Mapping[str, Any]) -> str:
    side = record.get("path1_side", "left")
    if side not in fmt.SIDES:
        raise InvalidInput(f"'path1_side' must be 'left' or 'right', got {side!r}")
    return side


def _candidate_extra(record: Mapping[str, Any], n: int, scores: dict[str, Any]) -> dict[str, Any] | None:
    """Candidate.extra of path`n`: our export's `extra<n>` plus the per-model scores."""
    extra = dict(_optional_dict(record, f"extra{n}") or {})
    if scores:
        extra[fmt.EXTRAS_KEY] = scores
    return extra or None


def _editreward_image(importer: ImportPlan, record: Mapping[str, Any], key: str, images_root: Path) -> StoredBlob:
    value = _text(record, key)
    return _at_row(f"{key} {value!r}", importer.image_from_file, _relative_file(images_root, value, key))


def _split_model_scores(extras: Mapping[str, Any]) -> tuple[tuple[dict, dict], dict[str, Any]]:
    """(the per-model keys of path1 and path2, prefix stripped; the record-level keys left over)."""
    sides: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    rest = {}
    for key, value in extras.items():
        prefix = next((p for p in fmt.MODEL_PREFIXES if key.startswith(p) and len(key) > len(p)), None)
        if prefix is None:
            rest[key] = value
        else:
            sides[fmt.MODEL_PREFIXES[prefix]][key.removeprefix(prefix)] = value
    return sides, rest


def _derived_id(item: VoteInput, other_keys: Mapping[str, Any] | None = None) -> str:
    """The vote's id from its content, images by sha256: the same row from any copy of the data matches."""
    payload = {
        "source": item.source.sha256, "instruction": item.instruction, "choice": item.choice,
        "left": [item.left[0].sha256, item.left[1]], "right": [item.right[0].sha256, item.right[1]],
        "rationale": item.rationale, "annotator": item.annotator, "dimension_scores": item.dimension_scores,
        "time_spent_ms": item.time_spent_ms, "category": item.category, "extras": item.extras,
        **({"other_keys": dict(other_keys)} if other_keys else {}),
    }
    return fmt.submission_id(item.origin, payload)


# --- folder layout ------------------------------------------------------------------------------------------


def import_folder(session: Session, *, root: Path, settings: Settings) -> ImportSummary:
    """Import `root/<task>/`: source.<ext>, instruction.txt, category.txt?, candidates/<name>.<ext>, votes.jsonl?"""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    task_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    with ImportPlan(settings, source_file=source_name(root)) as importer:
        importer.prefetch(path for task_dir in task_dirs for path in _folder_files(task_dir))
        for task_dir in task_dirs:
            importer.row = task_dir.name
            _at_row(f"{task_dir.name}", _folder_task, importer, task_dir)
            importer.summary.rows += 1
    return _write(session, importer)


def _folder_files(task_dir: Path) -> list[Path]:
    """The pictures a task folder's rows will read: source.<ext> and candidates/*."""
    candidates = task_dir / fmt.CANDIDATES_DIR
    files = [p for p in task_dir.iterdir() if p.stem == fmt.SOURCE_STEM]
    files += sorted(candidates.iterdir()) if candidates.is_dir() else []
    return [p for p in files if p.is_file() and p.suffix.lower() in fmt.IMAGE_SUFFIXES]


def _single_image(folder: Path, stem: str) -> Path:
    found = [p for p in folder.iterdir() if p.stem == stem and p.suffix.lower() in fmt.IMAGE_SUFFIXES]
    if len(found) != 1:
        names = ", ".join(stem + s for s in fmt.IMAGE_SUFFIXES)
        raise InvalidInput(f"expected exactly one of {names}, found {len(found)}")
    return found[0]


def _read_text(path: Path, *, required: bool) -> str | None:
    if not path.is_file():
        if required:
            raise InvalidInput(f"{path.name} is missing")
        return None
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path.name} is not UTF-8 text") from None


def _folder_candidates(importer: ImportPlan, task_dir: Path) -> dict[str, StoredBlob]:
    folder = task_dir / fmt.CANDIDATES_DIR
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in fmt.IMAGE_SUFFIXES) if folder.is_dir() else []
    stems = [p.stem for p in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise InvalidInput(f"{fmt.CANDIDATES_DIR}/ has several files for generator {duplicates[0]!r}")
    return {p.stem: _at_row(f"{fmt.CANDIDATES_DIR}/{p.name}", importer.image_from_file, p) for p in files}


def _folder_task(importer: ImportPlan, task_dir: Path) -> None:
    source_file = _single_image(task_dir, fmt.SOURCE_STEM)
    source = _at_row(source_file.name, importer.image_from_file, source_file)
    instruction = _read_text(task_dir / fmt.INSTRUCTION_FILE, required=True)
    if instruction is None:
        raise InvalidInput(f"{fmt.INSTRUCTION_FILE} is empty")
    base = VoteInput(source=source, instruction=instruction, left=(source, ""), right=(source, ""), choice="",
                     client_submission_id="", origin=fmt.FOLDER_ORIGIN, task_origin=fmt.FOLDER_ORIGIN,
                     category=_read_text(task_dir / fmt.CATEGORY_FILE, required=False), external_id=task_dir.name)
    task = importer.task(base)
    candidates = _folder_candidates(importer, task_dir)
    for generator, image in candidates.items():
        importer.candidate(task, image, generator, None)
    for line_number, line in _jsonl_lines(task_dir / fmt.VOTES_FILE):
        where = f"{fmt.VOTES_FILE} line {line_number}"
        _at_row(where, _folder_vote, importer, base, candidates, line)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if line.strip():
                yield number, line


def _folder_vote(importer: ImportPlan, base: VoteInput, candidates: dict[str, StoredBlob], line: str) -> None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise InvalidInput(f"expected a JSON object, got {type(record).__name__}")
    sides = []
    for key in fmt.SIDES:
        generator = _text(record, key)
        if generator not in candidates:
            raise InvalidInput(f"'{key}' names generator {generator!r}, which has no file in {fmt.CANDIDATES_DIR}/")
        sides.append((candidates[generator], generator))
    item = replace(
        base, left=sides[0], right=sides[1], choice=_choice(record.get("choice")),
        rationale=_optional_text(record, "rationale"), annotator=_text(record, "annotator", required=False),
        dimension_scores=_optional_dict(record, "dimension_scores"),
        time_spent_ms=_optional_int(record, "time_spent_ms"),
    )
    item.client_submission_id = _text(record, "client_submission_id", required=False) or _derived_id(item)
    importer.vote(item)


# --- Hugging Face datasets ----------------------------------------------------------------------------------


def import_hf(session: Session, *, path: Path, settings: Settings) -> ImportSummary:
    """Import a dataset written by `export hf` / `export parquet` (a save_to_disk folder or a parquet file)."""
    importer = ImportPlan(settings, source_file=source_name(path))  # the pictures are in the rows: no prefetch
    for row, record in enumerate(_hf_rows(path), start=1):
        importer.row = f"{path.name} row {row}"
        _at_row(importer.row, _hf_record, importer, record)
        importer.summary.rows += 1
    return _write(session, importer)


def _hf_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rows as plain values; image cells stay as stored ({"bytes", "path"} structs or raw bytes)."""
    for batch in _hf_batches(path):
        missing = [c for c in fmt.VOTE_REQUIRED_COLUMNS if c not in batch.column_names]
        if missing:
            raise InvalidInput(f"{path.name}: missing column {', '.join(repr(c) for c in missing)}")
        yield from batch.to_pylist()


def _hf_batches(path: Path):
    import pyarrow.parquet as pq

    if path.is_file() and path.suffix == ".parquet":
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise InvalidInput(f"{path} is not a readable parquet file ({exc})") from None
        yield from parquet.iter_batches(batch_size=64)
        return
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a datasets save_to_disk folder nor a .parquet file")
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise InvalidInput(f"{path} is not a datasets save_to_disk folder (no dataset_info.json)") from None
    splits = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    for split in splits:
        yield from split.with_format("arrow").iter(batch_size=64)


def _hf_image(importer: ImportPlan, record: Mapping[str, Any], column: str) -> StoredBlob:
    cell = record.get(column)
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not isinstance(data, bytes) or not data:
        raise InvalidInput(f"column '{column}' holds no image bytes")
    return _at_row(f"column '{column}'", importer.image_from_bytes, data)


def _hf_record(importer: ImportPlan, record: Mapping[str, Any]) -> None:
    sides = [(_hf_image(importer, record, f"{s}_image"), _text(record, f"{s}_generator")) for s in fmt.SIDES]
    item = VoteInput(
        source=_hf_image(importer, record, "source_image"), instruction=_text(record, "instruction"),
        left=sides[0], right=sides[1], choice=_choice(record.get("choice")), client_submission_id="",
        origin=_text(record, "vote_origin", required=False) or fmt.HF_ORIGIN,
        task_origin=_text(record, "task_origin", required=False) or fmt.HF_ORIGIN,
        category=_text(record, "category", required=False),
        external_id=_text(record, "task_external_id", required=False),
        rationale=_optional_text(record, "rationale"), annotator=_text(record, "annotator", required=False),
        dimension_scores=_optional_dict(record, "dimension_scores"),
        time_spent_ms=_optional_int(record, "time_spent_ms"),
        extras=(_optional_dict(record, "left_extra"), _optional_dict(record, "right_extra")),
        created_at=_optional_time(record, "created_at"),
    )
    item.client_submission_id = _text(record, "client_submission_id", required=False) or _derived_id(item)
    importer.vote(item)


def _optional_time(record: Mapping[str, Any], key: str) -> datetime | None:
    value = record.get(key)
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidInput(f"'{key}' must be an ISO 8601 time, got {value!r}") from None
