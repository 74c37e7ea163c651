"""The reward server's JSON schema, version `SCHEMA_VERSION` (documented with examples in docs/reward-server.md).

Requests are validated with these models (unknown fields are refused, so a typo is an error, not a silent default);
replies are built from them, and `app.rewards.client` parses replies with them. Nothing here is pickled: JSON only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, StrictInt, StrictStr, model_serializer

SCHEMA_VERSION = 1
MAX_ID_CHARS = 200
MAX_VERSION_CHARS = 64

ItemId = StrictStr | StrictInt  # echoed back as given; an item without one gets its position (0-based)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoredImage(_Strict):
    """An image already in the store, named by the sha256 of its stored bytes (the `images` table)."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex sha256 of the stored image")


ImageRef = StrictStr | StoredImage  # a string is base64 PNG/JPEG/WebP bytes (a `data:` URL prefix is accepted)


class ScoreItem(_Strict):
    """One (source, edited, instruction) to score."""

    source: ImageRef
    edited: ImageRef
    instruction: StrictStr
    id: ItemId | None = Field(default=None, description="echoed in the result; unique within the request")


class ScoreRequest(_Strict):
    """`POST /v1/score`: items to score, by the serving version or the one named by `version`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    items: list[ScoreItem]
    version: StrictStr | None = Field(default=None, max_length=MAX_VERSION_CHARS, description='e.g. "v0003"')


class ScoredResult(_Strict):
    """One item's score; `sigma` and `dimensions` only when the version has those heads (left out otherwise, so a
    version without them answers exactly as before)."""

    id: ItemId
    score: float
    sigma: float | None = Field(default=None, description="σ of the score (the uncertainty head), > 0")
    dimensions: dict[str, float] | None = Field(default=None, description="per-dimension scores (dimension heads)")

    @model_serializer(mode="wrap")
    def _leave_out_absent_heads(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        for key in ("sigma", "dimensions"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class FailedResult(_Strict):
    id: ItemId
    error: str


class ScoreReply(_Strict):
    """The scores in request order (`None` where an item failed) and one result per item, stamped with the version
    that computed them: its name and id, the sha256 of its files and its promotion-gate floor verdict."""

    schema_version: int = SCHEMA_VERSION
    version: str | None
    version_id: int | None
    model_sha256: str | None
    passed_floor: bool | None
    scores: list[float | None]
    results: list[ScoredResult | FailedResult]


class ErrorDetail(_Strict):
    code: str
    message: str


class ErrorReply(_Strict):
    """Every refusal of a whole request (4xx, 5xx): a stable `code` and a message that says what to change."""

    schema_version: int = SCHEMA_VERSION
    error: ErrorDetail


class HealthReply(_Strict):
    """`GET /v1/health`: 200 with status "ready" once the version this server answers with is loaded, else 503."""

    status: Literal["ready", "loading", "unavailable", "not loaded"]
    version: str | None
    detail: str | None = None


class VersionInfo(_Strict):
    version: str
    version_id: int
    model_sha256: str | None
    passed_floor: bool | None


class VersionReply(_Strict):
    """`GET /v1/version`: what answers a request without "version", what else is loaded, and the server's limits."""

    schema_version: int = SCHEMA_VERSION
    following: bool  # True: the promoted version, swapped on promotion; False: pinned to `default_version`
    default_version: str | None
    serving: VersionInfo | None
    pinned: list[VersionInfo]
    device: str
    queued_items: int  # waiting for the inference thread now
    limits: dict[str, int | float]
