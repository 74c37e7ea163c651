"""`RewardClient`: scores from one or several reward servers, with retries, raising on failure (never a 0).

Items are sent in chunks of `batch_size`. With several server URLs (replicas, e.g. one per GPU), chunks go round
robin and each retry moves to the next replica, so a dead replica is routed around. Results are matched to items by
id, never by position. One call's scores come from one version: without `version`, the first chunk's reply names
the version and the other chunks are pinned to it (a replica that swapped already loads it, answering 503 "loading"
meanwhile, which is retried). 429 and 5xx replies and network errors are retried after the server's Retry-After (or
an exponential back-off); any other refusal, or an item the server could not score, raises `RewardError`.
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import PIL.Image

from app.rewards.schema import FailedResult, ScoreReply
from storage.settings import reward_token_from_env

DEFAULT_URL = "http://127.0.0.1:8008"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

Image = PIL.Image.Image | np.ndarray | bytes | str | dict  # picture, HWC uint8 array, file bytes, base64, {"sha256"}


class RewardError(RuntimeError):
    """Scoring failed: the server refused the request or an item, or gave no answer within the retries."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class RewardReply:
    """Scores in item order and the version that computed all of them."""

    scores: list[float]
    ids: list[Any]
    version: str
    version_id: int
    model_sha256: str | None
    passed_floor: bool | None


class RewardClient:
    """A client of one reward server or of several replicas (round robin); thread-safe."""

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_retry_wait_s: float = 30.0,
        batch_size: int = 64,
        transport: httpx.BaseTransport | None = None,
    ):
        """`transport` replaces the network (httpx.MockTransport in tests)."""
        urls = [url] if isinstance(url, str) else list(url)
        if not urls or batch_size < 1 or retries < 0 or timeout_s <= 0:
            raise ValueError("RewardClient needs at least one URL, batch_size >= 1, retries >= 0 and timeout_s > 0.")
        self.urls = [u.rstrip("/") for u in urls]
        token = token if token is not None else reward_token_from_env()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport)
        self._retries, self._backoff_s, self._max_wait_s = retries, backoff_s, max_retry_wait_s
        self._batch_size = batch_size
        self._turn = itertools.count()  # round robin over the replicas, shared by every call
        self._turn_lock = threading.Lock()

    def score(
        self,
        sources: Image | Sequence[Image],
        edited: Sequence[Image],
        instructions: str | Sequence[str],
        *,
        ids: Sequence[Any] | None = None,
        version: str | None = None,
    ) -> list[float]:
        """One score per edited image (a single source or instruction is used for every one); raises RewardError."""
        return self.score_batch(sources, edited, instructions, ids=ids, version=version).scores

    def score_batch(
        self,
        sources: Image | Sequence[Image],
        edited: Sequence[Image],
        instructions: str | Sequence[str],
        *,
        ids: Sequence[Any] | None = None,
        version: str | None = None,
    ) -> RewardReply:
        """`score` with the version stamp and the ids; `version` pins one (default: what the server serves)."""
        items = build_items(sources, edited, instructions, ids)
        chunks = [items[i : i + self._batch_size] for i in range(0, len(items), self._batch_size)]
        first = self._post(chunks[0], version)
        replies = [first]
        if len(chunks) > 1:
            pinned = version or first.version
            with ThreadPoolExecutor(max_workers=min(len(chunks) - 1, 4 * len(self.urls))) as pool:
                replies += list(pool.map(lambda chunk: self._post(chunk, pinned), chunks[1:]))
        if len({(r.version, r.model_sha256) for r in replies}) > 1:
            raise RewardError(f"The replicas answered with different versions {sorted({r.version for r in replies})}.")
        return RewardReply(
            scores=[score for reply in replies for score in reply.scores],
            ids=[item["id"] for item in items],
            version=first.version,
            version_id=first.version_id,
            model_sha256=first.model_sha256,
            passed_floor=first.passed_floor,
        )

    def health(self) -> list[dict[str, Any]]:
        """Each replica's `GET /v1/health` reply (or the error reaching it), in URL order."""
        answers = []
        for url in self.urls:
            try:
                answers.append(self._http.get(f"{url}/v1/health").json())
            except (httpx.HTTPError, ValueError) as exc:
                answers.append({"status": "unreachable", "version": None, "detail": f"{type(exc).__name__}: {exc}"})
        return answers

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- one request --------------------------------------------------------------------------------------------

    def _post(self, items: list[dict[str, Any]], version: str | None) -> RewardReply:
        """One chunk, retried on the next replica each time; the scores in the chunk's item order."""
        body = {"items": items, **({"version": version} if version else {})}
        with self._turn_lock:
            start = next(self._turn)
        problem = "no attempt made"
        for attempt in range(self._retries + 1):
            url = self.urls[(start + attempt) % len(self.urls)]
            try:
                response = self._http.post(f"{url}/v1/score", json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out: try again, on the next replica
                problem, wait = f"{url}: {type(exc).__name__}: {exc}", None
            else:
                if response.status_code not in RETRY_STATUSES:
                    return _parsed(response, items, url)
                problem, wait = f"{url}: {_describe(response)}", _retry_after(response)
            if attempt < self._retries:
                time.sleep(min(wait if wait is not None else self._backoff_s * 2**attempt, self._max_wait_s))
        raise RewardError(f"No reward after {self._retries + 1} attempts; last: {problem}")


def _parsed(response: httpx.Response, items: list[dict[str, Any]], url: str) -> RewardReply:
    """The reply's scores matched to the items by id; RewardError for a refusal or any failed item."""
    if response.status_code not in (200, 422):
        raise RewardError(f"{url}: {_describe(response)}", status=response.status_code, code=_code(response))
    try:
        reply = ScoreReply.model_validate_json(response.content)
    except ValueError:
        raise RewardError(f"{url}: {_describe(response)}", status=response.status_code, code=_code(response)) from None
    by_id = {result.id: result for result in reply.results}
    failed = [f"item {r.id!r}: {r.error}" for r in reply.results if isinstance(r, FailedResult)]
    if failed:
        shown = "; ".join(failed[:5]) + (f" (and {len(failed) - 5} more)" if len(failed) > 5 else "")
        raise RewardError(f"{url}: {len(failed)} item(s) could not be scored: {shown}", status=422, code="bad_items")
    missing = [item["id"] for item in items if item["id"] not in by_id]
    if missing or reply.version is None or reply.version_id is None:
        raise RewardError(f"{url}: the reply has no score for item(s) {missing[:5]} or no version stamp.")
    return RewardReply(
        scores=[by_id[item["id"]].score for item in items],
        ids=[item["id"] for item in items],
        version=reply.version,
        version_id=reply.version_id,
        model_sha256=reply.model_sha256,
        passed_floor=reply.passed_floor,
    )


def _describe(response: httpx.Response) -> str:
    """'HTTP 429 overloaded: <the server's message>' (or the start of a body that is not an error reply)."""
    try:
        error = response.json()["error"]
        return f"HTTP {response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]!r}"


def _code(response: httpx.Response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


# --- items ----------------------------------------------------------------------------------------------------


def build_items(
    sources: Image | Sequence[Image],
    edited: Sequence[Image],
    instructions: str | Sequence[str],
    ids: Sequence[Any] | None,
) -> list[dict[str, Any]]:
    """The request's items: one per edited image, each with its id (the given one, else its position)."""
    count = len(edited)
    if count == 0:
        raise ValueError("Nothing to score: `edited` is empty.")
    source_list = _per_item(sources, count, "sources")
    instruction_list = [instructions] * count if isinstance(instructions, str) else list(instructions)
    id_list = list(range(count)) if ids is None else [int(i) if isinstance(i, np.integer) else i for i in ids]
    for name, values in (("instructions", instruction_list), ("ids", id_list)):
        if len(values) != count:
            raise ValueError(f"{len(values)} {name} for {count} edited images; give one each.")
    if len(set(id_list)) != count:
        raise ValueError("ids must be unique.")
    encoded: dict[int, str | dict] = {}  # id(object) → its encoding: a source shared by a group is encoded once

    def encode(image: Image) -> str | dict:
        key = id(image)
        if key not in encoded:
            encoded[key] = encode_image(image)
        return encoded[key]

    return [
        {"source": encode(s), "edited": encode(e), "instruction": i, "id": item_id}
        for s, e, i, item_id in zip(source_list, edited, instruction_list, id_list, strict=True)
    ]


def _per_item(value: Image | Sequence[Image], count: int, name: str) -> list[Image]:
    if isinstance(value, PIL.Image.Image | np.ndarray | bytes | str | dict):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"{len(values)} {name} for {count} edited images; give one, or one each.")
    return values


def encode_image(image: Image) -> str | dict:
    """The request's form of `image`: base64 of its file (a picture or an HWC uint8 array becomes a PNG), or a
    {"sha256": …} reference to a stored image, as given."""
    if isinstance(image, dict):
        return image
    if isinstance(image, str):
        return image  # base64 already
    if isinstance(image, np.ndarray):
        image = array_to_picture(image)
    if isinstance(image, PIL.Image.Image):
        buffer = io.BytesIO()
        picture = image if image.mode == "RGB" else image.convert("RGB")
        picture.save(buffer, format="PNG", compress_level=1)  # lossless; level 1: fast to write
        image = buffer.getvalue()
    if isinstance(image, bytes | bytearray):
        return base64.b64encode(image).decode("ascii")
    raise TypeError(f"Cannot send a {type(image).__name__} as an image; give a PIL image, HWC uint8 array or bytes.")


def array_to_picture(array: np.ndarray) -> PIL.Image.Image:
    """An (H, W, 3) or (H, W) uint8 array as a picture; anything else is a ValueError that says what is expected."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise ValueError(
            f"Expected an HWC uint8 array (H, W, 3), got dtype {array.dtype} and shape {tuple(array.shape)}; "
            "float images go through app.rewards.reward_fn, which converts them."
        )
    return PIL.Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[2] == 1 else array)
