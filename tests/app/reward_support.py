"""Helpers of the reward-server tests: pictures as request fields, a served app on a free port, a service."""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import PIL.Image
import uvicorn
from fastapi import FastAPI

from app.rewards.server import create_app
from app.scoring import ScoringService
from tests.app.conftest import AppStore

START_TIMEOUT_S = 60.0


def picture(color: tuple[int, int, int], size: tuple[int, int] = (40, 32)) -> PIL.Image.Image:
    """A plain picture with a marker square, so sources and edits differ in more than their mean."""
    image = PIL.Image.new("RGB", size, color)
    image.paste((255 - color[0], color[1], 255 - color[2]), (4, 4, 14, 14))
    return image


def png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def item(source: PIL.Image.Image, edited: PIL.Image.Image, instruction: str, item_id: Any = None) -> dict[str, Any]:
    """One request item with both pictures as base64 PNG."""
    body = {"source": b64(png(source)), "edited": b64(png(edited)), "instruction": instruction}
    return body if item_id is None else {**body, "id": item_id}


def distinct_items(count: int, offset: int = 0) -> list[tuple[PIL.Image.Image, PIL.Image.Image, str]]:
    """`count` (source, edited, instruction) triples that differ from each other (and from other offsets)."""
    triples = []
    for index in range(offset, offset + count):
        level = (index * 37) % 256
        source = picture((200, level, 40))
        edited = picture((level, 255 - level, (index * 91) % 256))
        triples.append((source, edited, f"make it look like variant {index}"))
    return triples


def reward_service(store: AppStore, **kwargs: Any) -> ScoringService:
    """A scoring service on the store as the reward server builds it, serving the active version (not started: tests
    swap versions with `refresh()`)."""
    options = {"max_batch": 8, "batch_wait_ms": 5.0, "max_queue": 64, **kwargs}
    service = ScoringService(store.factory, store.settings, **options)
    assert service.refresh(), "the store's active version did not load"
    return service


def reward_app(
    store: AppStore, service: ScoringService, default_version: str | None = None, **settings: Any
) -> FastAPI:
    """`create_app` on the store with settings overridden by `settings`."""
    changed = dataclasses.replace(store.settings, **settings)
    return create_app(service, settings=changed, factory=store.factory, default_version=default_version)


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """`app` on uvicorn in a thread on a free loopback port; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="reward-server", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "the reward server to start")
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll `condition` until it holds (every 20 ms), failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
