"""Request inputs of the scoring service: validated ids and uploads, and stored candidates read for scoring."""

from __future__ import annotations

from typing import Any

import PIL.Image
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased, sessionmaker

from storage.errors import InvalidInput
from storage.images import open_image
from storage.models import Candidate, Image, Task
from storage.settings import Settings
from storage.validation import clean_text

MAX_UPLOAD_EDITS = 16  # edited images per `score_upload` call


def distinct_candidate_ids(candidate_ids: Any) -> list[int]:
    """Distinct ids in their first order; anything but a list of integers is InvalidInput."""
    if not isinstance(candidate_ids, list | tuple):
        raise InvalidInput(f"candidate_ids must be a list of integers, got {type(candidate_ids).__name__}.")
    for value in candidate_ids:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"candidate ids must be integers, got {value!r:.40}.")
    return list(dict.fromkeys(candidate_ids))


def candidate_inputs(
    factory: sessionmaker[Session], settings: Settings, ids: list[int]
) -> dict[int, tuple[PIL.Image.Image, PIL.Image.Image, str]]:
    """id → (source, edited, instruction) of the stored ones; rows read in one short session, images after it."""
    source_image, edited_image = aliased(Image), aliased(Image)
    query = (
        select(Candidate.id, Task.instruction, source_image, edited_image)
        .join(Task, Task.id == Candidate.task_id)
        .join(source_image, source_image.id == Task.source_image_id)
        .join(edited_image, edited_image.id == Candidate.image_id)
        .where(Candidate.id.in_(ids))
    )
    with factory() as session:
        rows = {row[0]: row[1:] for row in session.execute(query)}
    decoded: dict[int, PIL.Image.Image] = {}  # image id → picture: a task's source is decoded once

    def picture(image: Image) -> PIL.Image.Image:
        if image.id not in decoded:
            decoded[image.id] = open_image(settings, image)
        return decoded[image.id]

    return {i: (picture(source), picture(edited), instruction) for i, (instruction, source, edited) in rows.items()}


def upload_instruction(instruction: Any, settings: Settings) -> str:
    """The cleaned instruction of an upload; empty or too long is InvalidInput."""
    if not isinstance(instruction, str) or not clean_text(instruction).strip():
        raise InvalidInput("The instruction is empty: describe the edit, e.g. 'make the sky purple'.")
    cleaned = clean_text(instruction).strip()
    if len(cleaned) > settings.instruction_max_chars:
        raise InvalidInput(
            f"The instruction has {len(cleaned)} characters; shorten it to at most {settings.instruction_max_chars}."
        )
    return cleaned


def check_upload_images(source: Any, edited: Any, settings: Settings) -> None:
    """Raise InvalidInput unless `source` and 1..MAX_UPLOAD_EDITS `edited` are pictures of an accepted size."""
    if not isinstance(edited, list | tuple) or not edited:
        raise InvalidInput("Add at least one edited image to score.")
    if len(edited) > MAX_UPLOAD_EDITS:
        raise InvalidInput(f"{len(edited)} edited images; score at most {MAX_UPLOAD_EDITS} at a time.")
    check_picture("source image", source, settings)
    for number, image in enumerate(edited, start=1):
        check_picture(f"edited image {number}", image, settings)


def check_picture(label: str, image: Any, settings: Settings) -> None:
    """Raise InvalidInput unless `image` is a picture whose sides and area the store accepts."""
    if not isinstance(image, PIL.Image.Image):
        raise InvalidInput(f"The {label} is missing or not a picture; upload a PNG, JPEG or WebP image.")
    width, height = image.size
    if min(width, height) < settings.min_image_side or width * height > settings.max_pixels:
        raise InvalidInput(
            f"The {label} is {width}x{height} pixels; each side must be at least {settings.min_image_side} and "
            f"the area at most {settings.max_pixels / 1e6:g} megapixels."
        )


def stored_pictures(
    factory: sessionmaker[Session], settings: Settings, sha256s: list[str]
) -> dict[str, PIL.Image.Image]:
    """sha256 → decoded picture of the stored images among `sha256s` (rows in one short session, files after it)."""
    if not sha256s:
        return {}
    with factory() as session:
        rows = list(session.scalars(select(Image).where(Image.sha256.in_(sorted(set(sha256s))))))
        session.expunge_all()
    return {row.sha256: open_image(settings, row) for row in rows}
