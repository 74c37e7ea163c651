"""From a request body to scoring inputs, and from scores to the reply: parsing, limits, image decoding.

Images are checked exactly as the store checks uploads (`storage.images.decode_upload`: size, signature, pixel
count before decoding, truncation, one frame); each distinct image string of a request is decoded once (RL groups
repeat one source for many edits). Problems with one item become that item's error; problems with the request as a
whole (unparsable JSON, missing fields, too many items, duplicate ids, too many decoded pixels) refuse it all.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import PIL.Image
from pydantic import ValidationError

from app.rewards.schema import (
    MAX_ID_CHARS,
    FailedResult,
    ImageRef,
    ScoredResult,
    ScoreReply,
    ScoreRequest,
    StoredImage,
)
from app.scoring import ScoredItem
from app.scoring.batching import Input
from app.scoring.versions import Serving
from storage.errors import InvalidInput
from storage.images import decode_upload
from storage.settings import Settings

StoredLookup = Callable[[list[str]], dict[str, PIL.Image.Image]]  # sha256s → the stored pictures among them
_SHOWN_ERRORS = 3  # validation errors named in one message


class RequestRejected(Exception):
    """The whole request is refused with `status`; `code` and `message` go into the error reply."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def parse_request(body: bytes, settings: Settings) -> ScoreRequest:
    """The validated request; RequestRejected (422, 413) names what is wrong without echoing the input."""
    try:
        request = ScoreRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestRejected(422, "invalid_request", describe_validation_error(exc)) from None
    count = len(request.items)
    if count == 0:
        raise RequestRejected(422, "invalid_request", "items is empty: send at least one item to score.")
    if count > settings.reward_max_items:
        raise RequestRejected(
            413,
            "too_many_items",
            f"{count} items in one request; send at most {settings.reward_max_items} (JRM_REWARD_MAX_ITEMS) per "
            "request, or split it.",
        )
    ids = [item.id for item in request.items if item.id is not None]
    if ids and len(ids) != count:
        raise RequestRejected(422, "invalid_request", "give every item an id, or none (then ids are positions).")
    if len(set(ids)) != len(ids) or any(isinstance(i, str) and len(i) > MAX_ID_CHARS for i in ids):
        raise RequestRejected(422, "invalid_request", f"item ids must be unique and at most {MAX_ID_CHARS} characters.")
    return request


def describe_validation_error(exc: ValidationError) -> str:
    """'items[2].instruction: Field required; …' for the first few errors (never the offending input)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:_SHOWN_ERRORS]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
        parts.append(f"{where or 'body'}: {error['msg']}")
    more = exc.error_count() - _SHOWN_ERRORS
    suffix = f" (and {more} more)" if more > 0 else ""
    return "The request does not follow the schema: " + "; ".join(parts) + suffix + " (docs/reward-server.md)."


@dataclass
class _Decoder:
    """Decodes a request's images once each, within the request's pixel budget."""

    settings: Settings
    stored: dict[str, PIL.Image.Image]
    decoded: dict[str, PIL.Image.Image | InvalidInput]
    pixels: int = 0

    def picture(self, ref: ImageRef, field: str) -> PIL.Image.Image:
        if isinstance(ref, StoredImage):
            if ref.sha256 not in self.stored:
                raise InvalidInput(f"{field}: no stored image has sha256 {ref.sha256}; send the image itself.")
            return self.stored[ref.sha256]
        if ref not in self.decoded:
            self.decoded[ref] = self._decode(ref)
        found = self.decoded[ref]
        if isinstance(found, InvalidInput):
            raise InvalidInput(f"{field}: {found}")
        return found

    def _decode(self, text: str) -> PIL.Image.Image | InvalidInput:
        try:
            picture = decode_upload(_base64_bytes(text, self.settings), settings=self.settings)
        except InvalidInput as exc:
            return exc
        self.count(picture)
        return picture

    def count(self, picture: PIL.Image.Image) -> None:
        """Add a decoded picture to the request's pixels; RequestRejected (413) once they are over the budget."""
        self.pixels += picture.width * picture.height
        budget = self.settings.reward_max_request_megapixels * 1e6
        if self.pixels > budget:
            raise RequestRejected(
                413,
                "too_many_pixels",
                f"The request's distinct images hold over {budget / 1e6:g} megapixels (JRM_REWARD_MAX_REQUEST_"
                "MEGAPIXELS); send fewer or smaller images per request.",
            )


def _base64_bytes(text: str, settings: Settings) -> bytes:
    """The bytes of a base64 string (or `data:image/...;base64,` URL); InvalidInput when it is not base64."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InvalidInput("a data: URL must be base64-encoded (data:image/png;base64,...).")
    if len(text) > 4 * math.ceil(settings.max_upload_bytes / 3) + 4:
        raise InvalidInput(f"the image is over the {settings.max_upload_mb:g} MB upload limit (JRM_MAX_UPLOAD_MB).")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("not valid base64: send the image file's bytes encoded with standard base64.") from None


def decode_items(request: ScoreRequest, settings: Settings, stored: StoredLookup) -> list[Input | InvalidInput]:
    """Each item's (source, edited, instruction), or the InvalidInput that refused it, in request order."""
    shas = [ref.sha256 for item in request.items for ref in (item.source, item.edited) if isinstance(ref, StoredImage)]
    decoder = _Decoder(settings, stored(shas) if shas else {}, {})
    for picture in decoder.stored.values():
        decoder.count(picture)
    inputs: list[Input | InvalidInput] = []
    for item in request.items:
        try:
            inputs.append(
                (decoder.picture(item.source, "source"), decoder.picture(item.edited, "edited"), item.instruction)
            )
        except InvalidInput as exc:
            inputs.append(exc)
    return inputs


def build_reply(
    request: ScoreRequest, outcomes: Sequence[ScoredItem | InvalidInput], serving: Serving
) -> tuple[dict[str, Any], int]:
    """(reply body, HTTP status): 200 when every item has a score, 422 when any has an error instead."""
    results: list[ScoredResult | FailedResult] = []
    for position, (item, outcome) in enumerate(zip(request.items, outcomes, strict=True)):
        item_id = position if item.id is None else item.id
        if isinstance(outcome, InvalidInput):
            results.append(FailedResult(id=item_id, error=str(outcome)))
        elif not all(math.isfinite(value) for value in _numbers(outcome)):
            results.append(FailedResult(id=item_id, error=f"the model returned a non-finite score ({outcome.score})."))
        else:
            results.append(
                ScoredResult(id=item_id, score=outcome.score, sigma=outcome.sigma, dimensions=outcome.dimensions)
            )
    stamped = next((o for o in outcomes if isinstance(o, ScoredItem)), None)
    reply = ScoreReply(
        version=stamped.version_name if stamped else serving.name,
        version_id=stamped.version_id if stamped else serving.version_id,
        model_sha256=stamped.model_sha256 if stamped else serving.model_sha256,
        passed_floor=stamped.passed_floor if stamped else serving.passed_floor,
        scores=[r.score if isinstance(r, ScoredResult) else None for r in results],
        results=results,
    )
    status = 200 if all(isinstance(r, ScoredResult) for r in results) else 422
    return reply.model_dump(mode="json"), status


def _numbers(outcome: ScoredItem) -> list[float]:
    """The score, σ and dimension scores an item carries (what must be finite to be sent)."""
    return [outcome.score, *([] if outcome.sigma is None else [outcome.sigma]), *(outcome.dimensions or {}).values()]
