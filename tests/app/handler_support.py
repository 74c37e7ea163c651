"""Helpers for the handler tests: `Deps` on an app store, users with roles, and requests as Gradio sends them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import gradio as gr

from app.deps import Deps
from storage.db import transaction
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


def as_user(name: str | None) -> gr.Request:
    """The request Gradio passes a handler for a logged-in `name` (None: no log-in)."""
    return gr.Request(username=name)
