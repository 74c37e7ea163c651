"""The inference thread: queued items scored in batches, one `JointRewardModel.score` forward per batch."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import PIL.Image

from app.scoring.versions import NoScorerYet, Serving
from trainer.prompting import build_example, collate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    """One (source, edited, instruction) sequence waiting for the inference thread."""

    source: PIL.Image.Image
    edited: PIL.Image.Image
    instruction: str
    future: Future  # resolves to (score, Serving)


class Batcher:
    """One queue and the single thread that drains it; the caller serialises `start`, `put` and `close`."""

    def __init__(self, serving: Callable[[], Serving | None], *, max_batch: int, batch_wait_s: float):
        self._serving = serving  # read once per batch: the model that computes the whole batch
        self._max_batch, self._batch_wait_s = max_batch, batch_wait_s
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the inference thread unless it runs already."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._inference_loop, name="scoring-inference", daemon=True)
            self.thread.start()

    def put(self, source: PIL.Image.Image, edited: PIL.Image.Image, instruction: str, future: Future) -> None:
        """Queue one sequence; `future` resolves to (score, Serving) or to the exception that stopped it."""
        self._queue.put(_Item(source, edited, instruction, future))

    def close(self) -> None:
        """Let the thread score what is queued, then end."""
        self._queue.put(None)

    def _inference_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run_batch(batch)
            except Exception as exc:  # noqa: BLE001 - never leave a request waiting on a dead thread
                log.exception("Scoring batch failed")
                _fail(batch, exc)

    def _next_batch(self) -> list[_Item] | None:
        """Up to `max_batch` items: the first one blocks, the rest arrive within `batch_wait_ms` of it."""
        first = self._queue.get()
        if first is None:
            return None
        batch, deadline = [first], time.monotonic() + self._batch_wait_s
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if item is None:  # stop: score this batch, then end
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _run_batch(self, batch: list[_Item]) -> None:
        """One forward of the serving model (read once) over the batch; each future gets (score, serving)."""
        serving = self._serving()
        if serving is None:
            _fail(batch, NoScorerYet("No scorer yet: the model version that was serving is gone."))
            return
        processor = serving.model.processor
        examples, ready = [], []
        for item in batch:
            try:
                examples.append(
                    build_example(processor, source=item.source, edited=item.edited, instruction=item.instruction)
                )
                ready.append(item)
            except Exception as exc:  # noqa: BLE001 - one bad input fails its own request only
                set_exception(item.future, exc)
        if not ready:
            return
        rewards = serving.model.score(collate(examples, processor)).float().cpu().tolist()  # (B,)
        for item, reward in zip(ready, rewards, strict=True):
            _set_result(item.future, (reward, serving))


def _set_result(future: Future, value: Any) -> None:
    with contextlib.suppress(InvalidStateError):  # already failed by its request (e.g. the queue was stopped)
        future.set_result(value)


def set_exception(future: Future, exc: BaseException) -> None:
    """Fail `future` with `exc` unless it is already done."""
    with contextlib.suppress(InvalidStateError):
        future.set_exception(exc)


def _fail(batch: list[_Item], exc: BaseException) -> None:
    for item in batch:
        set_exception(item.future, exc)
