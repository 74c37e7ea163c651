"""The app's handlers: plain typed functions that `app.ui` binds to events and tests call directly.

Each takes `deps` first and, where the caller matters, a `gr.Request` last (Gradio fills it in). Bad input
raises `gr.Error` with a message that says what to change; nothing is half-written (one transaction a call).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from sqlalchemy.orm import Session

from app.deps import Deps
from app.render import error
from storage.db import engine_of, transaction
from storage.errors import InvalidInput


# One per process: SQLite has one write lock per database file, and this app serves one store.
_SQLITE_TURNS = threading.Lock()


@contextmanager
def annotate_transaction(deps: Deps) -> Iterator[Session]:
    """`transaction(deps.factory)` for the annotate handlers; on SQLite they take turns in this process.

    Every SQLite transaction takes the one write lock (BEGIN IMMEDIATE), and one that finds it taken polls for it
    in growing sleeps (1, 2, 5 … 100 ms) with no queue, so under many concurrent annotators a waiter can lose the
    race again and again (p99 1.3 s at 16 back-to-back annotators). Waiting here instead, each starts as soon as
    the previous one ends (p99 0.3 s; docs/app-performance.md).
    """
    turns = _SQLITE_TURNS if engine_of(deps.factory).dialect.name == "sqlite" else nullcontext()
    with turns, transaction(deps.factory) as session:
        yield session


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the store's `InvalidInput` (bad ids, text, images) into a `gr.Error` with the same message."""
    try:
        yield
    except InvalidInput as exc:
        raise error(str(exc)) from None
