"""Helpers for the handler tests: `Deps` on an app store, users with roles, requests as Gradio sends them, and the
app served in-process for `gradio_client` tests."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import gradio as gr

from app.deps import Deps
from app.serving import build_app, launch_options
from storage.db import transaction
from storage.models import ModelVersion
from storage.users import create_user

if TYPE_CHECKING:
    from tests.app.conftest import AppStore

PASSWORD = "correct horse battery"
OPEN_OVERLAP = 10  # votes wanted per pair: high enough that the demo's simulated votes leave every pair open


def make_deps(store: AppStore, *, scoring=None, auth: bool = True, **settings) -> Deps:
    """Deps on `store` with auth on by default and pairs left open for new annotators."""
    changed = dataclasses.replace(store.settings, auth=auth, overlap_target=OPEN_OVERLAP, **settings)
    return Deps(factory=store.factory, settings=changed, scoring=scoring)


def add_users(store: AppStore, **roles: str) -> None:
    """Create users name=role, all with `PASSWORD`."""
    with transaction(store.factory) as session:
        for name, role in roles.items():
            create_user(session, name=name, role=role, password=PASSWORD)


def set_gate(factory, version_id: int, *, passed_floor: bool | None) -> None:
    """Give the version the promotion gate's floor verdict (`metrics["gate"]`); None removes it (an older version)."""
    with transaction(factory) as session:
        version = session.get(ModelVersion, version_id)
        metrics = {k: v for k, v in (version.metrics or {}).items() if k != "gate"}
        if passed_floor is not None:
            metrics["gate"] = {"passed_floor": passed_floor, "reason": "set by a test"}
        version.metrics = metrics  # a new dict: the JSON column sees the change


def as_user(name: str | None) -> gr.Request:
    """The request Gradio passes a handler for a logged-in `name` (None: no log-in)."""
    return gr.Request(username=name)


@contextmanager
def served_app(deps: Deps) -> Iterator[gr.Blocks]:
    """The app as `python -m app` builds it (queue, files, log-in), served in this process on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    blocks = build_app(deps)
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                  **launch_options(deps))
    try:
        yield blocks
    finally:
        blocks.close()
