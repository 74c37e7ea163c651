"""Calls for the same key at the same time run once in this process; the others wait and share the first's result.

The annotate tab uses it for a vote sent twice at once (a double click, two vote keys pressed together): the second
request waits for the first and answers with its outcome instead of opening a transaction of its own that would
only wait on the store's unique submission id and find the vote already there. The store's unique keys still
decide across processes and for requests that do not overlap; this only spares the duplicate's database work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class InFlight:
    """The calls now running, by key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Hashable, Future] = {}

    def run(self, key: Hashable, call: Callable[[], T]) -> tuple[T, bool]:
        """(`call()`, True); or, when a call for `key` is running already, (its result, False) once it ends.

        A first call that raised shares nothing: the waiting caller then runs its own `call` (its input may be
        the good one) and gets its own result or error.
        """
        with self._lock:
            running = self._running.get(key)
            if running is None:
                mine = self._running[key] = Future()
        if running is not None:
            try:
                return running.result(), False
            except Exception:  # noqa: BLE001 - the first call's error is its own; try this one
                return call(), True
        try:
            result = call()
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._running[key]
        mine.set_result(result)
        return result, True

    def __len__(self) -> int:
        with self._lock:
            return len(self._running)
