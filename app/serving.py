"""The served app: the page from `app.ui` with the queue and file settings that keep each Gradio call cheap.

Why each setting exists, with the profile behind it: `docs/app-performance.md`.
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr

from app.auth import login_checker
from app.deps import Deps
from app.ui import build_ui

CONCURRENCY = 8  # events served at once; CPU-heavy ones are capped lower in app.ui
# Gradio's queue rebuilds a pandas summary of every event it has recorded (up to 10,000) after each event, for
# its monitoring dashboard, which this app does not enable; recomputing it once per 10^9 events turns it off.
# Read when the queue is created.
GRADIO_ENVIRONMENT = {"GRADIO_ANALYTICS_CACHE_FREQUENCY": str(10**9)}


def build_app(deps: Deps) -> gr.Blocks:
    """The page, queued, with the stored images served in place."""
    for name, value in GRADIO_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    # Blobs are content-addressed and never rewritten, so Gradio may serve them from the store as they are; without
    # this it checks every `gr.Image` output against the allowed paths, hashes it and copies it into its cache.
    gr.set_static_paths([deps.settings.blob_dir.resolve()])
    return build_ui(deps).queue(default_concurrency_limit=CONCURRENCY)


def launch_options(deps: Deps) -> dict[str, Any]:
    """`Blocks.launch` arguments shared by `python -m app` and the served-app tests (host and port aside)."""
    settings = deps.settings
    return {
        "auth": login_checker(deps.factory) if settings.auth else None,
        "auth_message": "Log in with your JRM Studio account." if settings.auth else None,
        "allowed_paths": [str(settings.blob_dir.resolve()), str((settings.data_dir / "exports").resolve())],
        "max_file_size": settings.max_upload_bytes,
        "show_error": True,
    }
