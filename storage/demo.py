"""Write the demo dataset (`storage.demo_edits`, `storage.demo_votes`) into the store: the app's first-run data.

Tasks have origin "demo", category = the edit kind and external id `demo-<seed>-<index>`; candidates keep their
flaw and quality in `Candidate.extra`; votes come from simulated annotators (`sim-annotator-N`, no password)
with client submission ids `demo-<seed>-<task>-<pair>-<annotator>`. Building the same (tasks, seed) again
finds every row already there and adds nothing, and a larger `tasks` for the same seed extends a smaller one.

Cost is about 6 votes, 3 candidates and 70 SQL statements per task, nearly all of it in the store's own
functions (PNG encoding, fsync'd blobs, `record_vote`'s checks). Measured on the 2-core dev machine while
other test suites were running (load average ≈ 4): 200 tasks (the first-run default) 43 s wall / 22 s CPU,
400 tasks 85–110 s wall / 47 s CPU, on SQLite and PostgreSQL alike; the pure generation is ≈ 8 ms a task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from storage.db import transaction
from storage.demo_edits import DemoTask, demo_task
from storage.demo_photos import DEFAULT_SIZE
from storage.demo_votes import SimAnnotator, demo_votes, sim_annotators
from storage.errors import InvalidInput
from storage.images import store_pil_image
from storage.models import Task, User
from storage.repository import add_candidate, create_task, record_vote
from storage.settings import Settings

DEMO_ORIGIN = "demo"
DEFAULT_TASKS = 200  # ≈ 1,250 votes; build time: see the module docstring
DEFAULT_SEED = 0
MAX_TASKS = 100_000
SEED_LOCK_KEY = 0x4A524D44  # "JRMD": PostgreSQL advisory lock serialising first-run seeding


@dataclass(frozen=True)
class DemoSummary:
    """What `build_demo` found or wrote (`*_created`: rows this call added)."""

    tasks: int
    tasks_created: int
    candidates: int
    candidates_created: int
    votes: int
    votes_created: int
    annotators: int
    seconds: float


def _annotator_ids(session: Session, annotators: tuple[SimAnnotator, ...]) -> dict[str, int]:
    """User ids of the simulated annotators, creating the missing ones (role annotator, cannot log in)."""
    ids = {}
    for annotator in annotators:
        user = session.scalars(select(User).where(User.name == annotator.name)).first()
        if user is None:
            user = User(name=annotator.name, role="annotator", password_hash=None)
            session.add(user)
            session.flush()
        ids[annotator.name] = user.id
    return ids


def _ensure_task(session: Session, demo: DemoTask, settings: Settings) -> tuple[Task, bool]:
    """The task row for `demo` (found by its external id, or created) and whether it was created."""
    task = session.scalars(select(Task).where(Task.origin == DEMO_ORIGIN, Task.external_id == demo.external_id)).first()
    if task is not None:
        if task.instruction != demo.instruction:
            raise InvalidInput(
                f"demo task {demo.external_id} in the store was made by another version of the demo "
                "generator; build with another --seed or into a fresh store."
            )
        return task, False
    source = store_pil_image(session, image=demo.source, settings=settings)
    task = create_task(
        session,
        source_image_id=source.id,
        instruction=demo.instruction,
        category=demo.category,
        origin=DEMO_ORIGIN,
        provenance=DEMO_ORIGIN,
        external_id=demo.external_id,
        settings=settings,
    )
    return task, True


def _store_candidates(session: Session, demo: DemoTask, task: Task, settings: Settings) -> tuple[list[int], int]:
    """Candidate ids in `demo.candidates` order, and how many were new."""
    known = {candidate.id for candidate in task.candidates}
    ids = []
    for candidate in demo.candidates:
        image = store_pil_image(session, image=candidate.image, settings=settings)
        row = add_candidate(
            session, task_id=task.id, image_id=image.id, generator=candidate.generator, extra=candidate.extra()
        )
        ids.append(row.id)
    return ids, len(set(ids) - known)


def _store_votes(
    session: Session,
    demo: DemoTask,
    task_id: int,
    candidate_ids: list[int],
    annotators: tuple[SimAnnotator, ...],
    user_ids: dict[str, int],
    settings: Settings,
) -> tuple[int, int]:
    """Record the simulated votes on `demo`; returns (votes, votes created)."""
    votes = demo_votes(demo, overlap_target=settings.overlap_target, annotators=annotators)
    created = 0
    for vote in votes:
        result = record_vote(
            session,
            task_id=task_id,
            left_candidate_id=candidate_ids[vote.left],
            right_candidate_id=candidate_ids[vote.right],
            choice=vote.choice,
            rationale=vote.rationale,
            annotator_id=user_ids[vote.annotator],
            client_submission_id=vote.client_submission_id,
            time_spent_ms=vote.time_spent_ms,
            origin=DEMO_ORIGIN,
            provenance=DEMO_ORIGIN,
            settings=settings,
        )
        created += result.created
    return len(votes), created


def build_demo(session: Session, *, tasks: int, seed: int, settings: Settings, size: int = DEFAULT_SIZE) -> DemoSummary:
    """Write `tasks` demo tasks for `seed` with their candidates and simulated votes (the caller commits)."""
    if isinstance(tasks, bool) or not isinstance(tasks, int) or not 0 <= tasks <= MAX_TASKS:
        raise InvalidInput(f"tasks must be a whole number from 0 to {MAX_TASKS}, got {tasks!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput(f"seed must be a whole number, got {seed!r}.")
    if not settings.min_image_side <= size <= 4096:
        raise InvalidInput(f"size must be from JRM_MIN_IMAGE_SIDE ({settings.min_image_side}) to 4096 px, got {size}.")
    started = time.perf_counter()
    annotators = sim_annotators(max(5, settings.overlap_target))
    user_ids = _annotator_ids(session, annotators)
    counts = [0] * 6  # tasks, tasks created, candidates, candidates created, votes, votes created
    for index in range(tasks):
        demo = demo_task(seed, index, size=size)
        task, task_created = _ensure_task(session, demo, settings)
        candidate_ids, candidates_created = _store_candidates(session, demo, task, settings)
        votes, votes_created = _store_votes(session, demo, task.id, candidate_ids, annotators, user_ids, settings)
        step = (1, task_created, len(candidate_ids), candidates_created, votes, votes_created)
        counts = [total + part for total, part in zip(counts, step, strict=True)]
    session.flush()
    return DemoSummary(*counts, annotators=len(annotators), seconds=round(time.perf_counter() - started, 2))


def ensure_demo_data(
    factory: sessionmaker[Session], *, settings: Settings, tasks: int = DEFAULT_TASKS, seed: int = DEFAULT_SEED
) -> DemoSummary | None:
    """Build the demo in one transaction if the store has no task yet (first start); None when it has some."""
    with transaction(factory) as session:
        if session.get_bind().dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE already serialises
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEED_LOCK_KEY})
        if session.scalar(select(Task.id).limit(1)) is not None:
            return None
        return build_demo(session, tasks=tasks, seed=seed, settings=settings)
