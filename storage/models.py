"""The SQL schema: SQLAlchemy 2.0 typed models. Alembic migrations in `storage/migrations` mirror this file.

Enumerations are short strings guarded by CHECK constraints (portable between SQLite and PostgreSQL and
cheap to extend in a migration). Times are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

Role = Literal["annotator", "researcher", "admin"]
Choice = Literal["left", "right", "tie", "both_bad"]
AssignmentStatus = Literal["open", "done", "skipped", "expired"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
RunTrigger = Literal["manual", "threshold", "schedule", "first_run", "cli"]
VersionStatus = Literal["candidate", "active", "rejected", "retired"]
# Where a task or vote came from: a person in this app, the built-in simulator, or a file brought in.
Provenance = Literal["human", "demo", "import"]
# A pair's known answer in canonical order (candidate A = the lower id), for gold-pair quality checks.
GoldAnswer = Literal["a", "b", "tie", "both_bad"]

ROLES: tuple[str, ...] = get_args(Role)
CHOICES: tuple[str, ...] = get_args(Choice)
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
RUN_TRIGGERS: tuple[str, ...] = get_args(RunTrigger)
VERSION_STATUSES: tuple[str, ...] = get_args(VersionStatus)
ASSIGNMENT_STATUSES: tuple[str, ...] = get_args(AssignmentStatus)
PROVENANCES: tuple[str, ...] = get_args(Provenance)
GOLD_ANSWERS: tuple[str, ...] = get_args(GoldAnswer)
SOURCE_MAX_CHARS = 1024


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _one_of(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    quoted = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({quoted})", name=name)


class Base(DeclarativeBase):
    # Named constraints so migrations can alter them on every backend.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"
    __table_args__ = (_one_of("role", ROLES, "role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    password_hash: Mapped[str | None] = mapped_column(String(255))  # None: cannot log in (simulated, import)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    daily_vote_cap: Mapped[int | None] = mapped_column(Integer)  # None: the store's JRM_DAILY_VOTE_CAP
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Image(Base):
    """One row per distinct content; the bytes live on disk at `<blob_dir>/<sha[:2]>/<sha>.<ext>`."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(8))  # stored format: png | jpeg | webp
    byte_size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Task(Base):
    """A source image and an edit instruction; candidates are edits of it."""

    __tablename__ = "tasks"
    __table_args__ = (_one_of("provenance", PROVENANCES, "provenance"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source_image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    instruction: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(64), default="manual")  # demo | editreward | folder | upload …
    provenance: Mapped[str] = mapped_column(String(16), default="human", server_default="human", index=True)
    source: Mapped[str | None] = mapped_column(String(SOURCE_MAX_CHARS))  # the imported file or folder
    external_id: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    source_image: Mapped[Image] = relationship()
    candidates: Mapped[list[Candidate]] = relationship(back_populates="task", order_by="Candidate.id")


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("task_id", "image_id", "generator"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    generator: Mapped[str] = mapped_column(String(128))  # the editing model's name
    # Per-model scores that came with an import (e.g. EditReward's), kept verbatim for round-trips.
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    task: Mapped[Task] = relationship(back_populates="candidates")
    image: Mapped[Image] = relationship()


class Pair(Base):
    """An unordered pair of candidates of one task (candidate_a_id < candidate_b_id).

    `filled` counts votes plus open assignments: the next-pair query hands out a pair only while
    `filled < overlap target`, and reserves a slot with a guarded UPDATE, so concurrent annotators never
    push a pair past its target. `priority` is the hook for model-uncertainty sampling (higher first).
    """

    __tablename__ = "pairs"
    __table_args__ = (
        UniqueConstraint("candidate_a_id", "candidate_b_id"),
        CheckConstraint("candidate_a_id < candidate_b_id", name="ordered"),
        _one_of("gold", GOLD_ANSWERS, "gold"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    candidate_a_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    candidate_b_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    vote_count: Mapped[int] = mapped_column(Integer, default=0)
    filled: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    gold: Mapped[str | None] = mapped_column(String(16))  # known answer (GOLD_ANSWERS) of a gold pair


# The next-pair query orders by `filled, priority DESC, id`; an index in exactly that order lets it stop after
# a few rows at any table size (an all-ascending index would make PostgreSQL sort every unfilled pair).
Index("ix_pairs_next", Pair.filled, Pair.priority.desc(), Pair.id)
# The same for the "active" sampling order, where priority alone ranks the pairs below the overlap target.
Index("ix_pairs_priority", Pair.priority.desc(), Pair.id)


class Assignment(Base):
    """A pair shown to an annotator and reserved for them until it expires, is voted on or skipped."""

    __tablename__ = "assignments"
    __table_args__ = (
        _one_of("status", ASSIGNMENT_STATUSES, "status"),
        # Serves "this annotator's open assignment" and "pairs this annotator holds or skipped" without
        # reading the annotator's whole history of done assignments.
        Index("ix_assignments_annotator_status_pair", "annotator_id", "status", "pair_id"),
        Index("ix_assignments_status_expires", "status", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    # True: candidate_b is shown on the left. Stored so that a page reload shows the same layout.
    swapped: Mapped[bool] = mapped_column(Boolean, default=False)


class Vote(Base):
    __tablename__ = "votes"
    __table_args__ = (
        _one_of("choice", CHOICES, "choice"),
        _one_of("provenance", PROVENANCES, "provenance"),
        CheckConstraint("left_candidate_id <> right_candidate_id", name="distinct_candidates"),
        # One vote per annotator per pair; anonymous (imported) votes have annotator_id NULL.
        UniqueConstraint("pair_id", "annotator_id"),
        Index("ix_votes_annotator_pair", "annotator_id", "pair_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"), index=True)
    left_candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))  # as shown
    right_candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    choice: Mapped[str] = mapped_column(String(16))
    rationale: Mapped[str | None] = mapped_column(Text)
    dimension_scores: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # e.g. {"faithfulness": 4}
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    time_spent_ms: Mapped[int | None] = mapped_column(Integer)
    client_submission_id: Mapped[str] = mapped_column(String(128), unique=True)
    origin: Mapped[str] = mapped_column(String(64), default="annotate")  # annotate | demo | editreward …
    provenance: Mapped[str] = mapped_column(String(16), default="human", server_default="human", index=True)
    source: Mapped[str | None] = mapped_column(String(SOURCE_MAX_CHARS))  # the imported file or folder
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (
        _one_of("status", RUN_STATUSES, "status"),
        _one_of("trigger", RUN_TRIGGERS, "trigger"),
        Index("ix_training_runs_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    trigger: Mapped[str] = mapped_column(String(16), default="manual")
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # λ, epochs, backbone, …
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    eta_s: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # latest breakdown {pref, lm, total}
    history: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # curves {"step": [...], "pref": [...]}
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # held-out evaluation
    error: Mapped[str | None] = mapped_column(Text)
    log_path: Mapped[str | None] = mapped_column(String(1024))
    snapshot_path: Mapped[str | None] = mapped_column(String(1024))
    snapshot_fingerprint: Mapped[str | None] = mapped_column(String(128))
    vote_watermark: Mapped[int | None] = mapped_column(Integer)  # highest vote id in the snapshot
    # The votes the snapshot read: {"provenances": [...], "excluded_annotators": [...]} (storage.provenance).
    vote_selection: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (_one_of("status", VERSION_STATUSES, "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    path: Mapped[str] = mapped_column(String(1024))
    backbone: Mapped[str] = mapped_column(String(255))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="candidate", index=True)
    reason: Mapped[str | None] = mapped_column(Text)  # why promoted / rejected / retired
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column()


# At most one active version, enforced by the database (a partial unique index on both backends).
Index(
    "uq_model_versions_one_active",
    ModelVersion.status,
    unique=True,
    sqlite_where=ModelVersion.status == "active",
    postgresql_where=ModelVersion.status == "active",
)


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("version_id", "candidate_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"), index=True)
    score: Mapped[float] = mapped_column(Float)
    log_sigma: Mapped[float | None] = mapped_column(Float)  # the uncertainty head's log σ, when the model has one
    dimensions: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # per-dimension scores, when it has them
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AnnotatorFlag(Base):
    """The latest quality-control verdict on one annotator, and a researcher's clearance of it.

    Written by the quality check (`python -m storage agreement --write-flags`, and the worker after each run), never
    in a request. `flagged` is the statistics' verdict; a clearance (`cleared_at`, `cleared_reason`) lets the
    annotator's votes train again until a later check finds a reason that was not there when it was cleared.
    """

    __tablename__ = "annotator_flags"

    id: Mapped[int] = mapped_column(primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    reasons: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {"codes": [...], "text": [...]}
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)
    cleared_at: Mapped[datetime | None] = mapped_column()
    cleared_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    cleared_reason: Mapped[str | None] = mapped_column(Text)
    cleared_codes: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the reason codes the clearance covers


class LeaderboardCache(Base):
    """The leaderboard as the worker last computed it (BT fit, bootstrap intervals, mean scores), newest row wins.

    The fit and its resampling run in the worker, never in a request; the Leaderboard tab renders the newest row
    and says how old it is.
    """

    __tablename__ = "leaderboard_cache"

    id: Mapped[int] = mapped_column(primary_key=True)
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))  # whose mean scores
    vote_watermark: Mapped[int] = mapped_column(Integer)  # the highest vote id it read (0: none)
    votes: Mapped[int] = mapped_column(Integer)  # votes between different generators in the fit
    selection: Mapped[dict[str, Any]] = mapped_column(JSON)  # storage.provenance.VoteSelection.to_json()
    n_bootstrap: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)  # how long the computation took
    rows: Mapped[list[Any]] = mapped_column(JSON)  # LeaderboardRow fields per generator, strongest first
