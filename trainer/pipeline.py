"""A training run from its `training_runs` row to a published, gated model version.

`create_run` validates the parameters and queues a row; `run_training_job` runs it: claims it, snapshots
the votes (or reuses the run's saved snapshot, so a re-run trains on the same data), trains with progress and a
heartbeat written to the row, evaluates on the held-out split, measures the promotion gate (the candidate, the
active version and the pixel-rule floor on those same held-out votes, with no transaction open), publishes the
version and applies the gate's decision, and marks the run succeeded or failed with the error. Under
`accelerate launch` every process trains and only the main one touches the database and the registry. The worker
runs `python -m trainer train --run-id N --worker-id W` for the run it claimed as W; a run is trained only by its
claimer (`trainer.runs_queue.claim_run`). The params' validation is in `trainer/run_params.py`, the writes to the
row while training (progress, heartbeat) in `trainer/run_reporter.py`.
"""

from __future__ import annotations

import logging
import os
import shutil
import traceback
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from accelerate import PartialState
from accelerate.utils import set_seed
from sqlalchemy.orm import Session, sessionmaker

from storage.db import engine_of, session_factory, transaction
from storage.errors import InvalidInput, NotFound
from storage.models import RUN_TRIGGERS, ModelVersion, TrainingRun, User, utcnow
from storage.provenance import VoteSelection, vote_selection
from storage.settings import Settings
from trainer.data import (
    HELDOUT,
    TRAIN,
    ImageCache,
    Snapshot,
    eval_pairs,
    load_snapshot,
    make_snapshot,
    save_snapshot,
    vote_rows,
)
from trainer.gate import GateConfig, GateDecision
from trainer.model import JointRewardModel
from trainer.run_params import DEFAULT_PROMOTION_TOLERANCE, RUN_KEYS, RunParams, parse_params
from trainer.run_reporter import (
    HEARTBEAT_INTERVAL_S,
    PROGRESS_INTERVAL_S,
    RunCancelled,
    RunReporter,
    update_run,
)
from trainer.runs_queue import claim_run, new_worker_id
from trainer.train import train

if TYPE_CHECKING:
    from trainer.evaluate import EvalPair
    from trainer.registry import StagedVersion

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000
GATE_ATTEMPTS = 3  # measurements of the gate when the active version keeps changing under it; then a rejection
SNAPSHOT_STAGING_PREFIX = ".snapshot-tmp-"  # a snapshot being written, beside the run's `snapshot` folder

__all__ = [  # the run's params and reporter live in their own files; importers keep `from trainer.pipeline import …`
    "DEFAULT_PROMOTION_TOLERANCE",
    "GATE_ATTEMPTS",
    "HEARTBEAT_INTERVAL_S",
    "PROGRESS_INTERVAL_S",
    "RUN_KEYS",
    "HeldoutEvaluation",
    "RunCancelled",
    "RunParams",
    "RunReporter",
    "create_run",
    "evaluate_heldout",
    "parse_params",
    "run_folder",
    "run_training_job",
]


def create_run(
    session: Session, *, params: dict[str, Any], trigger: str, requested_by_id: int | None = None
) -> TrainingRun:
    """Queue a training run with validated `params` (stored as given); the caller commits."""
    parse_params(params)
    if trigger not in RUN_TRIGGERS:
        raise InvalidInput(f"trigger must be one of {', '.join(RUN_TRIGGERS)}; got {trigger!r}.")
    if requested_by_id is not None and session.get(User, requested_by_id) is None:
        raise NotFound(f"user {requested_by_id} does not exist; pass the id of the researcher who asked.")
    run = TrainingRun(status="queued", trigger=trigger, requested_by_id=requested_by_id, params=dict(params))
    session.add(run)
    session.flush()
    return run


# --- the job ---------------------------------------------------------------------------------------------------


def _start_run(factory: sessionmaker[Session], run_id: int, worker_id: str) -> dict[str, Any]:
    """Claim the run for `worker_id` (queued, or already claimed by it) and return its raw params.

    A run running under another claimer, or finished, is refused (`InvalidInput`) and left as it is: two trainers
    must never share a run's snapshot folder and row.
    """
    with transaction(factory) as session:
        run = claim_run(session, run_id=run_id, worker_id=worker_id)
        run.heartbeat_at, run.progress, run.step = utcnow(), 0.0, 0
        return dict(run.params or {})


def _run_params(factory: sessionmaker[Session], run_id: int) -> RunParams:
    with factory() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise NotFound(f"No training run with id {run_id}.")
        return parse_params(dict(run.params or {}))


def _fail_run(factory: sessionmaker[Session], run_id: int, exc: BaseException) -> None:
    """Record the error (the message first, then the traceback's last lines) unless the run was cancelled."""
    if isinstance(exc, RunCancelled):
        return
    summary = f"{type(exc).__name__}: {exc}" if not isinstance(exc, InvalidInput | NotFound) else str(exc)
    detail = "".join(traceback.format_exception(exc)[-3:])
    text = summary if isinstance(exc, InvalidInput | NotFound) else f"{summary}\n\n{detail}"
    try:
        update_run(
            factory, run_id, status="failed", error=text[:MAX_ERROR_CHARS], finished_at=utcnow(), heartbeat_at=utcnow()
        )
    except Exception:  # noqa: BLE001 - the original error matters more than a failed status write
        log.exception("could not mark run %s failed", run_id)


def run_folder(settings: Settings, run_id: int) -> Path:
    """`<runs_dir>/<run id>`: the run's snapshot and logs."""
    return settings.runs_dir / str(run_id)


def _snapshot(
    factory: sessionmaker[Session], run_id: int, settings: Settings, params: RunParams | None = None
) -> Snapshot:
    """The run's saved snapshot when it has one (a re-run trains on the same votes), else a new one.

    A new one is read in a read-only session and written to a staging folder with no transaction open (on SQLite,
    votes go on meanwhile), renamed into place complete, and only then recorded on the row.
    """
    folder = run_folder(settings, run_id) / "snapshot"
    with factory() as session:
        saved = session.get(TrainingRun, run_id).snapshot_path
    if saved and Path(saved).is_dir():
        return load_snapshot(saved)
    for leftover in (folder, *folder.parent.glob(f"{SNAPSHOT_STAGING_PREFIX}*")):
        if leftover.exists():  # a crash before the row was updated: a folder the row does not point at is not trusted
            shutil.rmtree(leftover)
    with session_factory(engine_of(factory), read_only=True)() as session:
        selection = _vote_selection(session, settings, params)
        rows = vote_rows(session, settings=settings, selection=selection)
    staging = folder.with_name(f"{SNAPSHOT_STAGING_PREFIX}{uuid.uuid4().hex}")
    try:
        snapshot = save_snapshot(make_snapshot(rows), staging)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a no-op once renamed
    update_run(
        factory,
        run_id,
        snapshot_path=str(folder),
        snapshot_fingerprint=snapshot.fingerprint,
        vote_watermark=snapshot.watermark,
        vote_selection=selection.to_json(),
    )
    return replace(snapshot, path=folder)


def _vote_selection(session: Session, settings: Settings, params: RunParams | None) -> VoteSelection:
    """The run's own provenances and flag rule where its params set them, else the store's."""
    chosen = vote_selection(session, settings=settings, exclude_flagged=params and params.exclude_flagged)
    return replace(chosen, provenances=params.provenances) if params and params.provenances else chosen


def _check_splits(snapshot: Snapshot) -> None:
    counts = snapshot.counts()
    if counts["train_votes"] == 0:
        raise InvalidInput(
            f"No votes to train on: the snapshot holds {len(snapshot.dataset)} votes, none of them in "
            "the train split. Collect more votes (or build the demo data) first."
        )


class HeldoutEvaluation(NamedTuple):
    """The held-out report (the run's and the version's `metrics`) and what the gate reuses: pairs and Δ."""

    metrics: dict[str, Any]
    pairs: list[EvalPair]
    delta: np.ndarray  # (P,) the candidate's r(left) − r(right) per held-out pair


def evaluate_heldout(model: JointRewardModel, snapshot: Snapshot) -> HeldoutEvaluation:
    """`trainer.evaluate`'s report on the held-out split, with the split sizes; `heldout_accuracy` None if empty."""
    from trainer.evaluate import report_scores, score_pairs

    pairs = eval_pairs(snapshot.split(HELDOUT), cache=ImageCache())
    report: dict[str, Any] = {"heldout_accuracy": None}
    delta = np.zeros(0)
    if pairs:  # scored once: the report and the gate read the same Δ
        scores = score_pairs(model, pairs)
        report, delta = report_scores(scores, pairs), scores.delta
    metrics = {**report, **snapshot.counts(), "snapshot_fingerprint": snapshot.fingerprint}
    return HeldoutEvaluation(metrics, pairs, delta)


def run_training_job(
    factory: sessionmaker[Session], *, run_id: int, settings: Settings, worker_id: str | None = None
) -> ModelVersion | None:
    """Train, evaluate, publish and gate run `run_id`; the new version (None on non-main processes).

    `worker_id` is the claimer the run is trained for: the worker that claimed it passes its id; None claims a
    queued run here under a fresh "cli:…" id. A run held by anyone else is refused.
    """
    state = PartialState()
    if not state.is_main_process:
        return _follow(factory, run_id=run_id, settings=settings)
    # An unknown, finished or someone else's run raises here and changes nothing.
    raw_params = _start_run(factory, run_id, worker_id or new_worker_id("cli"))
    try:
        params = parse_params(raw_params)
        with RunReporter(factory, run_id) as reporter:
            snapshot = _snapshot(factory, run_id, settings, params)
            state.wait_for_everyone()  # the other processes read the snapshot once it is saved
            _check_splits(snapshot)
            model = _train_model(params, snapshot, settings, reporter)
            state.wait_for_everyone()
            evaluation = evaluate_heldout(model, snapshot)
            version = _publish(
                factory,
                run_id=run_id,
                model=model,
                params=params,
                snapshot=snapshot,
                evaluation=evaluation,
                settings=settings,
            )
    except BaseException as exc:
        _fail_run(factory, run_id, exc)
        raise
    if version is not None:
        _refresh(factory, model=model, version=version, settings=settings)
    return version


def _refresh(
    factory: sessionmaker[Session], *, model: JointRewardModel, version: ModelVersion, settings: Settings
) -> None:
    """The new version's scores; after a promotion also queue priorities and quality flags (`trainer.refresh`).
    A failure leaves the run succeeded: stale priorities only make the queue less sharp."""
    from trainer.refresh import refresh_after_publish

    promoted = version.status == "active"
    try:
        summary = refresh_after_publish(
            factory, model=model, version_id=version.id, promoted=promoted, settings=settings
        )
    except Exception:  # noqa: BLE001 - the run's result stands; the next promotion refreshes again
        log.exception("refreshing scores, priorities and flags after publishing %s failed", version.name)
        return
    log.info("after publishing %s (%s): %s", version.name, version.status, summary)


def _follow(factory: sessionmaker[Session], *, run_id: int, settings: Settings) -> None:
    """A non-main process: train on the snapshot the main process saved, write nothing."""
    state = PartialState()
    params = _run_params(factory, run_id)
    state.wait_for_everyone()
    with factory() as session:
        snapshot = load_snapshot(session.get(TrainingRun, run_id).snapshot_path)
    _check_splits(snapshot)
    _train_model(params, snapshot, settings, progress=None)
    state.wait_for_everyone()
    return None


def _train_model(
    params: RunParams, snapshot: Snapshot, settings: Settings, progress: RunReporter | None
) -> JointRewardModel:
    set_seed(params.train.seed)  # the reward head's init
    model = JointRewardModel.from_config(params.jrm, cache_dir=settings.data_dir / "backbones")
    train(model, snapshot.split(TRAIN), config=params.train, jrm_config=params.jrm, progress=progress)
    return model


def _gate_config(params: RunParams) -> GateConfig:
    return GateConfig(tolerance=params.promotion_tolerance, require_floor=params.gate_floor)


def _gate_measurement(
    factory: sessionmaker[Session],
    *,
    model: JointRewardModel,
    params: RunParams,
    evaluation: HeldoutEvaluation,
    settings: Settings,
) -> Callable[[], GateDecision]:
    """A function that measures the gate on the run's held-out votes (slow: call it with no transaction open)."""
    from trainer.judge import HeldoutVotes, judge

    votes = HeldoutVotes.of(evaluation.pairs, evaluation.delta)  # the candidate and the pixel rules: once
    config, device = _gate_config(params), str(model.device)
    return lambda: judge(votes, factory, settings=settings, config=config, device=device)


def _publish(
    factory: sessionmaker[Session],
    *,
    run_id: int,
    model: JointRewardModel,
    params: RunParams,
    snapshot: Snapshot,
    evaluation: HeldoutEvaluation,
    settings: Settings,
) -> ModelVersion:
    """Measure the gate and save the model with no transaction open, then publish, apply the gate's decision and
    mark the run succeeded in one short one.

    A run that stopped being `running` meanwhile (cancelled) publishes nothing: its staged files are removed. When the
    active version changes between the measurement and the transaction, the gate is measured again (outside it), up
    to GATE_ATTEMPTS times; then the version is rejected with that reason.
    """
    from trainer.registry import ActiveChanged, stage_version

    measure, decision = None, None
    if params.promote:
        measure = _gate_measurement(factory, model=model, params=params, evaluation=evaluation, settings=settings)
        decision = measure()
    config = {
        "jrm": params.jrm.to_dict(),
        "train": params.train.to_dict(),
        "snapshot_fingerprint": snapshot.fingerprint,
        "vote_watermark": snapshot.watermark,
    }
    staging = stage_version(
        save=model.save, settings=settings, backbone=params.jrm.backbone, config=config, metrics=evaluation.metrics
    )
    with staging as staged:
        for attempt in range(1, GATE_ATTEMPTS + 1):
            try:
                return _commit(factory, run_id=run_id, staged=staged, decision=decision, settings=settings)
            except ActiveChanged as exc:
                assert measure is not None and decision is not None
                log.info("run %s, gate attempt %d: %s", run_id, attempt, exc)
                if attempt < GATE_ATTEMPTS:
                    decision = measure()
                else:
                    decision = decision.overruled(
                        f"{str(exc).rstrip('.')}, {GATE_ATTEMPTS} times in a row; train again or promote by hand"
                    )
        return _commit(factory, run_id=run_id, staged=staged, decision=decision, settings=settings)


def _commit(
    factory: sessionmaker[Session],
    *,
    run_id: int,
    staged: StagedVersion,
    decision: GateDecision | None,
    settings: Settings,
) -> ModelVersion:
    """One short transaction: check the run is still running and the active version the one measured, add the
    version, apply the decision (None: leave a candidate), mark the run succeeded. `ActiveChanged` writes nothing."""
    from trainer.registry import add_version, apply_promotion_gate, require_same_active

    with transaction(factory) as session:
        run = session.get(TrainingRun, run_id, with_for_update=True, populate_existing=True)  # a cancel waits for us
        if run is None or run.status != "running":
            status = "gone" if run is None else run.status
            raise RunCancelled(f"run {run_id} is {status}; its model was not published.")
        if decision is not None:
            require_same_active(session, decision)  # before add_version: a conflict leaves no folder to undo
        version = add_version(session, staged, run_id=run_id)
        if decision is not None:  # the files were hashed moments ago, while staging: not read again under the lock
            apply_promotion_gate(session, version_id=version.id, decision=decision, settings=settings, verify=False)
        session.flush()
        session.refresh(version)
        run.status, run.progress, run.metrics, run.finished_at = "succeeded", 1.0, dict(version.metrics), utcnow()
        run.eta_s, run.heartbeat_at = 0.0, utcnow()
        session.flush()
    return version
