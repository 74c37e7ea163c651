"""The two phases of an import: check every row and write every blob with no database work, then insert in bulk.

`ImportPlan` is phase one. The parsers in `storage.importers` hand it images, tasks, candidates and votes row by
row; it validates each field with the repository's own checks (same messages, prefixed with the row), writes the
blobs (each file fsynced before its rename, then one directory fsync per blob folder at the end: the rename only
has to be durable before the commit that references it, and ~256 folders cost far less than one fsync per file),
and keeps the rows in memory. Pictures named by path are read, checked and written on `IMAGE_WORKERS` threads
ahead of the rows that use them (`prefetch`). Nothing touches the session, so an import does not hold SQLite's
write lock (nor a PostgreSQL connection) while it reads and decodes pictures.

`write_plan` is phase two, inside the caller's transaction: a few bulk statements per table (INSERT … ON CONFLICT DO
NOTHING for images by sha256, pairs by their candidates and votes by client_submission_id; tasks and candidates
looked up first, as the per-row path did). A refused row was refused in phase one, so this phase fails only on a
database error or a conflict with rows already stored (a deactivated annotator, a client_submission_id used for
another task); the caller's rollback then leaves the database as it was: one import is still all or nothing.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from storage.annotation_queue import _set_status
from storage.errors import InvalidInput
from storage.images import StoredBlob, blob_path, lock_blobs, sync_blob_folders, write_upload_blob
from storage.interchange import ImportSummary
from storage.models import Assignment, Candidate, Image, Pair, Task, User, Vote, utcnow
from storage.repository import _insert_for
from storage.settings import Settings
from storage.users import _check_name, create_user, get_user_by_name
from storage.validation import (
    CATEGORY_MAX_CHARS,
    EXTERNAL_ID_MAX_CHARS,
    NAME_MAX_CHARS,
    ORIGIN_MAX_CHARS,
    _choice,
    _client_submission_id,
    _dimension_scores,
    _name,
    _optional_text,
    _provenance,
    _source,
    _text,
    _time_spent,
    json_object,
)

if TYPE_CHECKING:
    from storage.importers import VoteInput

# Decoding, PNG encoding and the per-file fsync of pictures overlap on a few threads: Pillow and fsync release the
# GIL, and a disk serves several fsyncs at once far faster than one after another.
IMAGE_WORKERS = 4
CHUNK = 500  # ids per IN (…) lookup, well under every backend's bound-parameter limit
TaskKey = tuple[str, str]  # (source sha256, instruction as given)
CandidateKey = tuple[TaskKey, str, str]  # (task, image sha256, generator as given)


@dataclass
class _PlannedVote:
    row: str  # "file.json row 7", for errors found in phase two
    task: TaskKey
    left: CandidateKey
    right: CandidateKey
    annotator: str | None
    values: dict[str, Any]  # the votes row less task, pair, candidates and annotator ids


@dataclass
class ImportPlan:
    """Phase one: validated rows and blobs already on disk, in first-seen order; no database access."""

    settings: Settings
    source_file: str
    summary: ImportSummary = field(default_factory=ImportSummary)
    blobs: dict[str, StoredBlob] = field(default_factory=dict)  # sha256 → blob
    tasks: dict[TaskKey, dict[str, Any]] = field(default_factory=dict)  # → tasks row less source_image_id
    candidates: dict[CandidateKey, dict[str, Any]] = field(default_factory=dict)  # → generator, extra
    votes: list[_PlannedVote] = field(default_factory=list)
    row: str = ""  # the row being read, set by the parser
    _by_submission: dict[str, tuple[str | None, TaskKey]] = field(default_factory=dict)
    _pair_voters: set[tuple[str, frozenset[CandidateKey]]] = field(default_factory=set)
    _names: set[str] = field(default_factory=set)
    _folders: set[Path] = field(default_factory=set)
    _files: dict[Path, StoredBlob] = field(default_factory=dict)
    _uploads: dict[bytes, StoredBlob] = field(default_factory=dict)  # sha256 of the bytes as given → blob
    _pending: dict[Path, Future[tuple[bytes, StoredBlob]]] = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> ImportPlan:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:  # a refused row: pictures not yet started are not read
            self._pool.shutdown(wait=True, cancel_futures=True)

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Start reading and writing these pictures on worker threads; `image_from_file` then waits for each. Errors
        surface when the row that names the file asks for it, so they keep their row and their order."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(IMAGE_WORKERS, thread_name_prefix="import-blob")
        for path in paths:
            if path not in self._pending and path not in self._files:
                self._pending[path] = self._pool.submit(self._read_and_write, path)

    def image_from_file(self, path: Path) -> StoredBlob:
        """Write the blob of the picture at `path` (each file read once per import)."""
        if path not in self._files:
            if path in self._pending:
                digest, blob = self._pending.pop(path).result()
                self._uploads.setdefault(digest, self.blobs.setdefault(blob.sha256, blob))
                self._files[path] = self._uploads[digest]
            else:
                self._files[path] = self.image_from_bytes(self._read(path))
        return self._files[path]

    def _read(self, path: Path) -> bytes:
        if not path.is_file():
            raise InvalidInput("the image file is missing")
        with path.open("rb") as file:  # read one byte past the limit: the size check then refuses it
            return file.read(self.settings.max_upload_bytes + 1)

    def _read_and_write(self, path: Path) -> tuple[bytes, StoredBlob]:
        data = self._read(path)
        return hashlib.sha256(data).digest(), write_upload_blob(
            data=data, settings=self.settings, touched=self._folders
        )

    def image_from_bytes(self, data: bytes) -> StoredBlob:
        """Validate and write `data`; the same bytes again (a source image on every row) are not decoded twice."""
        digest = hashlib.sha256(data).digest()
        if digest not in self._uploads:
            blob = write_upload_blob(data=data, settings=self.settings, touched=self._folders)
            self._uploads[digest] = self.blobs.setdefault(blob.sha256, blob)
        return self._uploads[digest]

    def task(self, item: VoteInput) -> TaskKey:
        """The task of `item`, its fields checked as `create_task` checks them when it is first seen."""
        key = (item.source.sha256, item.instruction)
        if key not in self.tasks:
            s = self.settings
            category = _optional_text(item.category, field="category", max_chars=CATEGORY_MAX_CHARS, example="color")
            self.tasks[key] = {
                "instruction": _text(
                    item.instruction,
                    field="instruction",
                    max_chars=s.instruction_max_chars,
                    example="make the sky purple",
                ),
                "origin": _name(item.task_origin, field="origin", max_chars=ORIGIN_MAX_CHARS, example="manual"),
                "external_id": _optional_text(
                    item.external_id, field="external_id", max_chars=EXTERNAL_ID_MAX_CHARS, example="a1"
                ),
                "category": category.strip() if category else None,
                "provenance": "import",
                "source": _source(self.source_file),
            }
        return key

    def candidate(self, task: TaskKey, image: StoredBlob, generator: str, extra: dict[str, Any] | None) -> CandidateKey:
        """The candidate (first-seen `extra` kept), checked as `add_candidate` checks it."""
        key = (task, image.sha256, generator)
        if key not in self.candidates:
            self.candidates[key] = {
                "generator": _name(generator, field="generator", max_chars=NAME_MAX_CHARS, example="instruct-pix2pix"),
                "extra": json_object(extra, field="extra"),
            }
        return key

    def vote(self, item: VoteInput) -> None:
        """Plan the task, candidates and vote of `item`; a client_submission_id seen earlier in the file is a no-op."""
        task = self.task(item)
        left = self.candidate(task, *item.left, item.extras[0])
        right = self.candidate(task, *item.right, item.extras[1])
        values = _vote_values(item, self.source_file, self.settings)
        if left == right:
            raise InvalidInput(f"left and right are the same candidate ({item.left[1]!r}); show two different ones.")
        if item.annotator is not None and item.annotator not in self._names:
            _check_name(item.annotator)  # what create_user would refuse
            self._names.add(item.annotator)
        csid = values["client_submission_id"]
        if csid in self._by_submission:
            if self._by_submission[csid] != (item.annotator, task):
                raise _reused_submission(csid)
            self.summary.votes_existing += 1
            return
        if item.annotator is not None:
            voter = (item.annotator, frozenset((left, right)))
            if voter in self._pair_voters:
                raise InvalidInput(
                    "this annotator already voted on this pair (earlier in the file); ask for the next pair."
                )
            self._pair_voters.add(voter)
        self._by_submission[csid] = (item.annotator, task)
        self.votes.append(_PlannedVote(self.row, task, left, right, item.annotator, values))

    def sync(self) -> None:
        """Make every written blob's name durable; call once, after the last row and before `write_plan`."""
        sync_blob_folders(self._folders)


def _vote_values(item: VoteInput, source_file: str, settings: Settings) -> dict[str, Any]:
    """The checks and normalisation of `record_vote`, for an imported vote."""
    return {
        "choice": _choice(item.choice),
        "rationale": _optional_text(
            item.rationale,
            field="rationale",
            max_chars=settings.rationale_max_chars,
            example="B kept the background but ignored 'make it wood'",
        ),
        "client_submission_id": _client_submission_id(item.client_submission_id),
        "dimension_scores": _dimension_scores(item.dimension_scores),
        "time_spent_ms": _time_spent(item.time_spent_ms),
        "origin": _name(item.origin, field="origin", max_chars=ORIGIN_MAX_CHARS, example="annotate"),
        "provenance": _provenance("import"),
        "source": _source(source_file),
        "created_at": item.created_at or utcnow(),
    }


def _reused_submission(csid: str) -> InvalidInput:
    return InvalidInput(
        f"client_submission_id {csid!r} was already used for another annotator's or task's vote; send a fresh id "
        "(a UUID) with each new vote."
    )


def _chunks(values: Iterable[Any]) -> Iterator[list[Any]]:
    values = list(values)
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


# --- phase two ----------------------------------------------------------------------------------------------


def write_plan(session: Session, plan: ImportPlan) -> ImportSummary:
    """Insert the planned rows in bulk in the caller's transaction; returns the summary (new and existing counts)."""
    insert = _insert_for(session.get_bind().dialect.name)
    lock_blobs(session)  # the collection must not remove a blob between our check and our commit
    images = _write_images(session, plan, insert)
    users = _resolve_users(session, plan)
    tasks = _write_tasks(session, plan, images)
    candidates = _write_candidates(session, plan, images, tasks, insert)
    pairs = _pair_ids(session, tasks.values())
    _write_votes(session, plan, tasks, candidates, pairs, users, insert)
    return plan.summary


def _write_images(session: Session, plan: ImportPlan, insert) -> dict[str, int]:
    """sha256 → image id, inserting the missing rows; every blob is checked to be on disk, under the blob lock."""
    missing = [b.sha256 for b in plan.blobs.values() if not blob_path(plan.settings, b.sha256, b.format).is_file()]
    if missing:
        raise InvalidInput(
            f"the blob of image {missing[0]} vanished during the import (a garbage collection?); run the import again"
        )
    if plan.blobs:
        rows = [
            {
                "sha256": b.sha256,
                "width": b.width,
                "height": b.height,
                "format": b.format,
                "byte_size": b.byte_size,
                "created_at": utcnow(),
            }
            for b in plan.blobs.values()
        ]
        session.execute(insert(Image.__table__).on_conflict_do_nothing(index_elements=["sha256"]), rows)
    ids: dict[str, int] = {}
    for chunk in _chunks(plan.blobs):
        ids.update(
            (sha, id_) for id_, sha in session.execute(select(Image.id, Image.sha256).where(Image.sha256.in_(chunk)))
        )
    return ids


def _resolve_users(session: Session, plan: ImportPlan) -> dict[str, int]:
    """Annotator name → id, created without a password (cannot log in) when new; a deactivated one is refused."""
    users: dict[str, int] = {}
    for vote in plan.votes:
        if vote.annotator is None or vote.annotator in users:
            continue
        try:
            user: User = get_user_by_name(session, name=vote.annotator) or create_user(
                session, name=vote.annotator, role="annotator"
            )
        except InvalidInput as exc:  # a name taken in another case
            raise type(exc)(f"{vote.row}: {exc}") from None
        if not user.active:
            raise InvalidInput(
                f"{vote.row}: user {user.name!r} is deactivated; an admin must reactivate them before they vote."
            )
        users[vote.annotator] = user.id
    return users


def _write_tasks(session: Session, plan: ImportPlan, images: dict[str, int]) -> dict[TaskKey, int]:
    """Task key → id: the oldest task with that source and instruction, else a new one."""
    found: dict[TaskKey, int] = {}
    sources = {images[sha]: sha for sha, _ in plan.tasks}
    for chunk in _chunks(sources):
        query = select(Task.id, Task.source_image_id, Task.instruction).where(Task.source_image_id.in_(chunk))
        for id_, source_id, instruction in session.execute(query.order_by(Task.id)):
            found.setdefault((sources[source_id], instruction), id_)
    new = [key for key in plan.tasks if key not in found]
    if new:
        rows = [{**plan.tasks[key], "source_image_id": images[key[0]], "created_at": utcnow()} for key in new]
        statement = Task.__table__.insert().returning(Task.id, sort_by_parameter_order=True)
        found.update(zip(new, session.scalars(statement, rows), strict=True))
    plan.summary.tasks += len(new)
    return found


def _write_candidates(session: Session, plan: ImportPlan, images, tasks, insert) -> dict[CandidateKey, int]:
    """Candidate key → id, inserting the missing ones and a pair with every other candidate of their task."""
    by_id = {image_id: sha for sha, image_id in images.items()}
    task_of = {task_id: key for key, task_id in tasks.items()}
    existing: dict[int, list[int]] = defaultdict(list)  # task id → candidate ids
    found: dict[CandidateKey, int] = {}
    for chunk in _chunks(task_of):
        query = select(Candidate.id, Candidate.task_id, Candidate.image_id, Candidate.generator)
        for id_, task_id, image_id, generator in session.execute(query.where(Candidate.task_id.in_(chunk))):
            existing[task_id].append(id_)
            if image_id in by_id:
                found.setdefault((task_of[task_id], by_id[image_id], generator), id_)
    new = [key for key in plan.candidates if key not in found]
    if not new:
        return found
    if session.get_bind().dialect.name == "postgresql":  # as add_candidate: concurrent adds must see each other
        for chunk in _chunks(sorted({tasks[key[0]] for key in new})):
            session.execute(select(Task.id).where(Task.id.in_(chunk)).with_for_update())
    rows = [
        {"task_id": tasks[key[0]], "image_id": images[key[1]], **plan.candidates[key], "created_at": utcnow()}
        for key in new
    ]
    statement = Candidate.__table__.insert().returning(Candidate.id, sort_by_parameter_order=True)
    found.update(zip(new, session.scalars(statement, rows), strict=True))
    pairs = []
    for key in new:
        task_id, candidate_id = tasks[key[0]], found[key]
        pairs += [
            {"task_id": task_id, "candidate_a_id": min(other, candidate_id), "candidate_b_id": max(other, candidate_id)}
            for other in existing[task_id]
        ]
        existing[task_id].append(candidate_id)
    if pairs:
        session.execute(insert(Pair.__table__).on_conflict_do_nothing(), pairs)
    plan.summary.candidates += len(new)
    return found


def _pair_ids(session: Session, task_ids: Iterable[int]) -> dict[tuple[int, int], int]:
    """(low candidate id, high candidate id) → pair id, for every pair of these tasks."""
    pairs = {}
    for chunk in _chunks(task_ids):
        query = select(Pair.id, Pair.candidate_a_id, Pair.candidate_b_id).where(Pair.task_id.in_(chunk))
        pairs.update(((a, b), id_) for id_, a, b in session.execute(query))
    return pairs


def _write_votes(session: Session, plan: ImportPlan, tasks, candidates, pairs, users, insert) -> None:
    """Insert the votes (a stored client_submission_id is a no-op), then count them on their pairs."""
    rows = []
    for vote in plan.votes:
        left, right = candidates[vote.left], candidates[vote.right]
        rows.append(
            {
                **vote.values,
                "task_id": tasks[vote.task],
                "left_candidate_id": left,
                "right_candidate_id": right,
                "pair_id": pairs[min(left, right), max(left, right)],
                "annotator_id": users.get(vote.annotator),
            }
        )
    created: set[str] = set()
    if rows:
        statement = insert(Vote.__table__).on_conflict_do_nothing().returning(Vote.client_submission_id)
        created = set(session.scalars(statement, rows))
    _check_conflicts(session, plan, [row for row in rows if row["client_submission_id"] not in created])
    plan.summary.votes += len(created)
    new = [row for row in rows if row["client_submission_id"] in created]
    _count_votes(session, new)


def _check_conflicts(session: Session, plan: ImportPlan, skipped: list[dict[str, Any]]) -> None:
    """A vote not inserted is an earlier import's (counted as existing) or a conflict (refused, as record_vote)."""
    stored: dict[str, tuple[int | None, int]] = {}
    for chunk in _chunks(row["client_submission_id"] for row in skipped):
        query = select(Vote.client_submission_id, Vote.annotator_id, Vote.task_id)
        stored.update(
            (csid, (a, t)) for csid, a, t in session.execute(query.where(Vote.client_submission_id.in_(chunk)))
        )
    rows_of = {vote.values["client_submission_id"]: vote.row for vote in plan.votes}
    for row in skipped:
        csid = row["client_submission_id"]
        if csid not in stored:
            earlier = session.scalar(
                select(Vote.id).where(Vote.pair_id == row["pair_id"], Vote.annotator_id == row["annotator_id"])
            )
            raise InvalidInput(
                f"{rows_of[csid]}: this annotator already voted on this pair (vote {earlier}); ask for the next pair."
            )
        if stored[csid] != (row["annotator_id"], row["task_id"]):
            raise InvalidInput(f"{rows_of[csid]}: {_reused_submission(csid)}")
        plan.summary.votes_existing += 1


def _count_votes(session: Session, votes: list[dict[str, Any]]) -> None:
    """vote_count += votes; filled += votes less those that fill their annotator's own open reservation."""
    voters = {(row["annotator_id"], row["pair_id"]) for row in votes if row["annotator_id"] is not None}
    released: dict[int, int] = defaultdict(int)
    for chunk in _chunks({pair_id for _, pair_id in voters}):
        query = (
            select(Assignment.annotator_id, Assignment.pair_id)
            .where(Assignment.status == "open", Assignment.pair_id.in_(chunk))
            .distinct()
        )
        for annotator_id, pair_id in [r for r in session.execute(query) if tuple(r) in voters]:
            released[pair_id] += _set_status(
                session,
                (Assignment.annotator_id == annotator_id, Assignment.status == "open", Assignment.pair_id == pair_id),
                "done",
            )
    counts: dict[int, int] = defaultdict(int)
    for row in votes:
        counts[row["pair_id"]] += 1
    if counts:
        table = Pair.__table__
        statement = (
            update(table)
            .where(table.c.id == bindparam("pair"))
            .values(vote_count=table.c.vote_count + bindparam("votes"), filled=table.c.filled + bindparam("fills"))
        )
        session.connection().execute(
            statement, [{"pair": p, "votes": n, "fills": n - released[p]} for p, n in counts.items()]
        )
