"""Versions asked for by name ("pinned"), loaded in a background thread and kept while recently used.

A request never waits for a load: `get` answers a loaded version at once, and otherwise starts its load (one thread
per version being loaded) and raises `VersionLoading`, so the caller retries. A version whose load failed raises
`VersionUnavailable` with the reason until `retry_failed_s` passed; an unknown name raises `NotFound` from `find`.
At most `capacity` pinned models stay in memory: the least recently used one is dropped for a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from app.scoring.versions import Serving, VersionLoading, VersionUnavailable
from storage.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

State = Literal["ready", "loading", "unavailable", "not loaded"]


class PinnedVersions:
    """The pinned models by version name; `find(name)` reads the version's row (fast), `load(target)` loads it."""

    def __init__(
        self,
        find: Callable[[str], Any],
        load: Callable[[Any], Serving],
        *,
        capacity: int,
        retry_failed_s: float,
    ):
        if capacity < 1:
            raise ValueError("PinnedVersions needs capacity >= 1.")
        self._find, self._load = find, load
        self._capacity, self._retry_failed_s = capacity, retry_failed_s
        self._models: OrderedDict[str, Serving] = OrderedDict()  # least recently used first
        self._loading: dict[str, threading.Event] = {}  # set when that load ended, either way
        self._failed: dict[str, tuple[str, float]] = {}  # name → (reason, monotonic time)
        self._lock = threading.Lock()

    def get(self, name: str) -> Serving:
        """The loaded version `name`; else its load is started and `VersionLoading` raised (see the module doc)."""
        with self._lock:
            self._raise_unless_loadable(name)
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
        try:
            target = self._find(name)
        except NotFound:
            raise
        except InvalidInput as exc:  # a row whose folder cannot be named: as unloadable as a corrupt folder
            self._record_failure(name, exc)
            raise VersionUnavailable(self._failed[name][0]) from None
        with self._lock:
            if name in self._models:  # loaded while the row was read
                return self._models[name]
            if name not in self._loading:
                self._loading[name] = threading.Event()
                threading.Thread(target=self._load_now, args=(name, target), name=f"load-{name}", daemon=True).start()
        raise VersionLoading(f"Model version {name} is loading; retry in a few seconds.")

    def wait(self, name: str, timeout_s: float) -> Serving:
        """`get`, waiting up to `timeout_s` for a load it starts or finds running (start-up, tests; not requests)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.get(name)
            except VersionLoading:
                with self._lock:
                    done = self._loading.get(name)
                if done is not None and not done.wait(max(deadline - time.monotonic(), 0.0)):
                    raise
                if time.monotonic() >= deadline:
                    raise

    def state(self, name: str) -> tuple[State, Serving | None, str | None]:
        """(state, the model when ready, why when unavailable) of `name`, from memory: starts nothing."""
        with self._lock:
            if name in self._models:
                return "ready", self._models[name], None
            if name in self._loading:
                return "loading", None, None
            if name in self._failed:
                return "unavailable", None, self._failed[name][0]
            return "not loaded", None, None

    def loaded(self) -> list[Serving]:
        """The pinned models in memory, least recently used first."""
        with self._lock:
            return list(self._models.values())

    def discard(self, name: str) -> None:
        """Drop the pinned model `name` (the service now follows that version and serves it itself)."""
        with self._lock:
            self._models.pop(name, None)

    def _raise_unless_loadable(self, name: str) -> None:
        if name in self._loading:
            raise VersionLoading(f"Model version {name} is loading; retry in a few seconds.")
        failure = self._failed.get(name)
        if failure is not None and time.monotonic() - failure[1] < self._retry_failed_s:
            raise VersionUnavailable(failure[0])

    def _load_now(self, name: str, target: Any) -> None:
        try:
            serving = self._load(target)
        except Exception as exc:  # noqa: BLE001 - any load failure is this version's, reported to its requests
            self._record_failure(name, exc)
        else:
            with self._lock:
                self._models[name] = serving
                self._failed.pop(name, None)
                while len(self._models) > self._capacity:
                    dropped, _ = self._models.popitem(last=False)
                    log.info("Dropped pinned model version %s (least recently used)", dropped)
            log.info("Pinned model version %s loaded", name)
        finally:
            with self._lock:
                self._loading.pop(name).set()

    def _record_failure(self, name: str, exc: BaseException) -> None:
        reason = f"Model version {name} cannot be loaded: {exc}"
        with self._lock:
            self._failed[name] = (reason, time.monotonic())
        log.error("%s", reason)
