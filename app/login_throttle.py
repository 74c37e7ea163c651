"""Slow down password guessing: failed log-ins per account name, and a cap on password checks at once.

After `free_failures` failed attempts in a row for a name, that name must wait before its next attempt is even
checked: `first_wait_s`, doubling with each further failure up to `max_wait_s`. A successful log-in clears the name.
Attempts made while a name waits are refused without a password check (and do not lengthen the wait, so a
guesser cannot keep the owner locked out longer than `max_wait_s` after they stop). Names are trimmed and
case-folded, so variants of one name share a count (stricter than the store's exact match), and only their first
`KEY_MAX_CHARS` characters are kept (longer than any name the store accepts; a flood of huge names stays small);
at most `max_names` are remembered, oldest first out.

The password hash (scrypt) costs tens of milliseconds of CPU and 16 MiB by design, so `app.auth` also runs at most
`LOGIN_CHECKS_AT_ONCE` checks at a time: a flood of log-ins cannot take every worker thread or core from the
annotators' requests.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

LOGIN_CHECKS_AT_ONCE = 2
KEY_MAX_CHARS = 128


@dataclass
class _Failures:
    count: int
    retry_at: float  # monotonic time before which the next attempt is refused unchecked


class LoginThrottle:
    """Failed log-ins by name; thread-safe."""

    def __init__(
        self,
        *,
        free_failures: int = 5,
        first_wait_s: float = 1.0,
        max_wait_s: float = 300.0,
        max_names: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if free_failures < 1 or not 0 < first_wait_s <= max_wait_s or max_names < 1:
            raise ValueError("LoginThrottle needs free_failures >= 1, 0 < first_wait_s <= max_wait_s, max_names >= 1")
        self._free, self._first, self._max, self._max_names = free_failures, first_wait_s, max_wait_s, max_names
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    @staticmethod
    def _key(name: object) -> str:
        return (name.strip().lower() if isinstance(name, str) else repr(name))[:KEY_MAX_CHARS]

    def wait_s(self, name: object) -> float:
        """Seconds before `name` may try again; 0 when an attempt may be checked now."""
        with self._lock:
            failures = self._failures.get(self._key(name))
            return 0.0 if failures is None else max(0.0, failures.retry_at - self._clock())

    def record(self, name: object, *, succeeded: bool) -> None:
        """The outcome of a checked attempt."""
        key = self._key(name)
        with self._lock:
            if succeeded:
                self._failures.pop(key, None)
                return
            failures = self._failures.pop(key, None) or _Failures(0, 0.0)
            failures.count += 1
            over = failures.count - self._free
            if over >= 0:
                failures.retry_at = self._clock() + min(self._max, self._first * 2 ** min(over, 32))
            self._failures[key] = failures  # most recent last
            while len(self._failures) > self._max_names:
                self._failures.popitem(last=False)
