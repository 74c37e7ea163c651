"""Fixtures of the storage tests: rows made directly or through the repository, on both backends."""

from __future__ import annotations

import itertools
import uuid

import pytest

from storage import repository as repo
from storage.models import Candidate, Image, Task, User


@pytest.fixture
def make_image(session):
    """Insert an `images` row directly (the blob store is tested elsewhere)."""

    def make() -> Image:
        image = Image(sha256=uuid.uuid4().hex * 2, width=64, height=48, format="png", byte_size=1234)
        session.add(image)
        session.flush()
        return image

    return make


@pytest.fixture
def make_user(session):
    counter = itertools.count()

    def make(active: bool = True) -> User:
        user = User(name=f"annotator-{next(counter)}-{uuid.uuid4().hex[:6]}", role="annotator", active=active)
        session.add(user)
        session.flush()
        return user

    return make


@pytest.fixture
def make_task(session, settings, make_image):
    """A task with `n` candidates (and so n·(n-1)/2 pairs)."""

    def make(n: int = 3, instruction: str = "make the sky purple") -> tuple[Task, list[Candidate]]:
        task = repo.create_task(session, source_image_id=make_image().id, instruction=instruction, settings=settings)
        candidates = [
            repo.add_candidate(session, task_id=task.id, image_id=make_image().id, generator=f"model-{i}")
            for i in range(n)
        ]
        return task, candidates

    return make


@pytest.fixture
def vote(session, settings):
    """record_vote with sensible defaults; keyword overrides replace them."""

    def cast(task: Task, left: Candidate, right: Candidate, **overrides) -> repo.VoteResult:
        kwargs = dict(
            task_id=task.id,
            left_candidate_id=left.id,
            right_candidate_id=right.id,
            choice="left",
            client_submission_id=uuid.uuid4().hex,
            settings=settings,
        )
        return repo.record_vote(session, **(kwargs | overrides))

    return cast
