"""The inference thread: queued items scored in batches, one `JointRewardModel.score_all` forward per version per batch.

An item either follows the serving version (read once per batch) or carries the `Serving` it must be scored by (a
pinned version, or the one a request resolved when it started); a batch's items are grouped by version, so one
forward never mixes versions. With `max_queue`, `put_many` admits a request's items all together or raises
`Overloaded`, so the queue cannot grow without bound.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import PIL.Image

from app.scoring.versions import ModelScore, NoScorerYet, Serving
from storage.errors import InvalidInput
from trainer.prompting import build_example, collate

log = logging.getLogger(__name__)

Input = tuple[PIL.Image.Image, PIL.Image.Image, str]  # (source, edited, instruction)


class Overloaded(RuntimeError):
    """The queue holds `max_queue` items already; nothing of the request was queued. Retry in a moment."""


@dataclass(frozen=True)
class _Item:
    """One (source, edited, instruction) sequence waiting for the inference thread."""

    source: PIL.Image.Image
    edited: PIL.Image.Image
    instruction: str
    future: Future  # resolves to (ModelScore, Serving)
    serving: Serving | None = None  # the version to score it with; None: the serving version when its batch runs


class Batcher:
    """One queue and the single thread that drains it; the caller serialises `start`, `put*` and `close`."""

    def __init__(
        self,
        serving: Callable[[], Serving | None],
        *,
        max_batch: int,
        batch_wait_s: float,
        max_queue: int | None = None,
    ):
        self._serving = serving  # read once per batch: the model that computes the batch's following items
        self._max_batch, self._batch_wait_s, self._max_queue = max_batch, batch_wait_s, max_queue
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._waiting = 0  # items queued, not yet taken into a batch
        self._count_lock = threading.Lock()
        self.thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Items queued and not yet taken into a batch."""
        return self._waiting

    def start(self) -> None:
        """Start the inference thread unless it runs already."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._inference_loop, name="scoring-inference", daemon=True)
            self.thread.start()

    def check_room(self, items: int) -> None:
        """Raise `Overloaded` when `items` more would not fit in the queue now."""
        with self._count_lock:
            self._check_room(items)

    def put_many(self, inputs: Sequence[Input], futures: Sequence[Future], serving: Serving | None = None) -> None:
        """Queue every input (scored by `serving`, or the serving version when None) or, over `max_queue`, none;
        each future resolves to (ModelScore, Serving) or to the exception that stopped its item."""
        with self._count_lock:
            self._check_room(len(inputs))
            self._waiting += len(inputs)
        for (source, edited, instruction), future in zip(inputs, futures, strict=True):
            self._queue.put(_Item(source, edited, instruction, future, serving))

    def _check_room(self, items: int) -> None:
        if self._max_queue is not None and self._waiting + items > self._max_queue:
            raise Overloaded(
                f"The scoring queue is full ({self._waiting} of {self._max_queue} items waiting); "
                "retry in a moment or send fewer items at once."
            )

    def close(self) -> None:
        """Let the thread score what is queued, then end."""
        self._queue.put(None)

    def _inference_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            for serving, items in self._by_version(batch):
                try:
                    self._run_batch(serving, items)
                except Exception as exc:  # noqa: BLE001 - never leave a request waiting on a dead thread
                    log.exception("Scoring batch failed")
                    _fail(items, exc)

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
        with self._count_lock:
            self._waiting -= len(batch)
        return batch

    def _by_version(self, batch: list[_Item]) -> list[tuple[Serving | None, list[_Item]]]:
        """The batch split by the version that scores each item (the serving one read once), in first-seen order."""
        following = self._serving() if any(item.serving is None for item in batch) else None
        groups: dict[int | None, tuple[Serving | None, list[_Item]]] = {}
        for item in batch:
            serving = item.serving or following
            key = None if serving is None else serving.version_id
            groups.setdefault(key, (serving, []))[1].append(item)
        return list(groups.values())

    def _run_batch(self, serving: Serving | None, batch: list[_Item]) -> None:
        """One forward of `serving`'s model over the batch; each future gets (ModelScore, its own Serving)."""
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
            except Exception as exc:  # noqa: BLE001 - one bad input fails its own item only
                set_exception(item.future, InvalidInput(f"The model's processor could not read this item: {exc}"))
        if not ready:
            return
        scores = serving.model.score_all(collate(examples, processor)).rows()  # B × (μ, σ, dimensions): one forward
        for item, (mu, sigma, dimensions) in zip(ready, scores, strict=True):
            _set_result(item.future, (ModelScore(mu, sigma, dimensions), item.serving or serving))


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
