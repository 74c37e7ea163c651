"""The app's handlers: plain typed functions that `app.ui` binds to events and tests call directly.

Each takes `deps` first and, where the caller matters, a `gr.Request` last (Gradio fills it in). Bad input
raises `gr.Error` with a message that says what to change; nothing is half-written (one transaction a call).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from app.render import error
from storage.errors import InvalidInput
from storage.images import image_path
from storage.models import Image
from storage.settings import Settings


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the store's `InvalidInput` (bad ids, text, images) into a `gr.Error` with the same message."""
    try:
        yield
    except InvalidInput as exc:
        raise error(str(exc)) from None


def image_file(session: Session, settings: Settings, image_id: int) -> str:
    """The stored file of an image, for a `gr.Image(type="filepath")` output."""
    image = session.get(Image, image_id)
    if image is None:
        raise error(f"image {image_id} is missing from the store.")
    return str(image_path(settings, image))
