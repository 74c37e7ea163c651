"""A training run from its `training_runs` row to a published, gated model version.

`create_run` validates the parameters and queues a row; `run_training_job` runs it: marks it running, snapshots
the votes (or reuses the run's saved snapshot, so a re-run trains on the same data), trains with progress and a
heartbeat written to the row, evaluates on the held-out split, measures the promotion gate (the candidate, the
active version and the pixel-rule floor on those same held-out votes, with no transaction open), publishes the
version and applies the gate's decision, and marks the run succeeded or failed with the error. Under
`accelerate launch` every process trains and only the main one touches the database and the registry. The worker
runs `python -m trainer train --run-id N`.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from accelerate import PartialState
from accelerate.utils import set_seed
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from storage.db import engine_of, session_factory, transaction
from storage.errors import InvalidInput, NotFound
from storage.models import RUN_TRIGGERS, ModelVersion, TrainingRun, User, utcnow
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
from trainer.gate import DEFAULT_TOLERANCE, GateConfig, GateDecision
from trainer.model import JointRewardModel, JRMConfig
from trainer.train import ProgressEvent, TrainConfig, train

if TYPE_CHECKING:
    from trainer.evaluate import EvalPair
    from trainer.registry import StagedVersion

log = logging.getLogger(__name__)

DEFAULT_PROMOTION_TOLERANCE = DEFAULT_TOLERANCE
PROGRESS_INTERVAL_S = 2.0  # the row is written at most this often while training
HEARTBEAT_INTERVAL_S = 10.0  # …and its heartbeat at least this often, also while a slow step or the evaluation runs
MAX_ERROR_CHARS = 4000
RUN_KEYS = ("promotion_tolerance", "promote", "gate_floor")  # params that belong to the run, not to a config
GATE_ATTEMPTS = 3  # measurements of the gate when the active version keeps changing under it; then a rejection
SNAPSHOT_STAGING_PREFIX = ".snapshot-tmp-"  # a snapshot being written, beside the run's `snapshot` folder


class RunCancelled(RuntimeError):
    """The run's row stopped being `running` (cancelled from the app or taken over); training stops."""


@dataclass(frozen=True)
class RunParams:
    """A run's validated `params`: the model's config, the training config and what to do with the result."""

    jrm: JRMConfig
    train: TrainConfig
    promotion_tolerance: float = DEFAULT_PROMOTION_TOLERANCE
    promote: bool = True
    gate_floor: bool = True  # false: the gate skips its size and floor checks (tests, a researcher's own call)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, defaults included (what the run row records)."""
        return {
            **self.jrm.to_dict(),
            **self.train.to_dict(),
            "promotion_tolerance": self.promotion_tolerance,
            "promote": self.promote,
            "gate_floor": self.gate_floor,
        }


def parse_params(params: Any) -> RunParams:
    """Validate a run's `params` JSON (JRMConfig and TrainConfig fields, `promotion_tolerance`, `promote`,
    `gate_floor`)."""
    if not isinstance(params, dict):
        raise InvalidInput(f"params must be a JSON object, got {type(params).__name__}.")
    jrm_keys = {f.name for f in fields(JRMConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(params) - jrm_keys - train_keys - set(RUN_KEYS))
    if unknown:
        known = sorted(jrm_keys | train_keys | set(RUN_KEYS))
        raise InvalidInput(f"Unknown training parameter(s) {unknown}; known: {', '.join(known)}.")
    tolerance = params.get("promotion_tolerance", DEFAULT_PROMOTION_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance < 1:
        raise InvalidInput(f"promotion_tolerance must be a number in [0, 1), e.g. 0.01; got {tolerance!r}.")
    promote, gate_floor = params.get("promote", True), params.get("gate_floor", True)
    if not isinstance(promote, bool):
        raise InvalidInput(f"promote must be true or false, got {promote!r}.")
    if not isinstance(gate_floor, bool):
        raise InvalidInput(
            f"gate_floor must be true or false (false skips the gate's floor check), got {gate_floor!r}."
        )
    try:
        _check_types(JRMConfig, params)
        _check_types(TrainConfig, params)
        jrm = JRMConfig(**{k: v for k, v in params.items() if k in jrm_keys})
        config = TrainConfig(**{k: v for k, v in params.items() if k in train_keys})
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"Invalid training parameters: {exc}") from None
    return RunParams(
        jrm=jrm, train=config, promotion_tolerance=float(tolerance), promote=promote, gate_floor=gate_floor
    )


def _check_types(cls: type, params: dict[str, Any]) -> None:
    """JSON can carry the wrong type (a string λ); check each given field against its default's type."""
    for f in fields(cls):
        if f.name not in params or f.default is None:
            continue
        value, default = params[f.name], f.default
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif isinstance(default, float):
            ok, kind = isinstance(value, int | float) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        else:  # tuples of names
            ok, kind = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value), "a list of names"
        if not ok:
            raise ValueError(f"{f.name} must be {kind}, got {value!r}.")


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


# --- writing to the run's row ----------------------------------------------------------------------------------


def _update_run(factory: sessionmaker[Session], run_id: int, *, running_only: bool = False, **values: Any) -> bool:
    """One short transaction; with `running_only`, only while the row is still `running`. True if it changed."""
    with transaction(factory) as session:
        query = update(TrainingRun).where(TrainingRun.id == run_id)
        if running_only:
            query = query.where(TrainingRun.status == "running")
        return session.execute(query.values(**values)).rowcount == 1


class RunReporter:
    """Writes training progress to the run's row (throttled) and a heartbeat from a background thread."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        run_id: int,
        *,
        interval_s: float = PROGRESS_INTERVAL_S,
        heartbeat_s: float = HEARTBEAT_INTERVAL_S,
    ):
        self.factory, self.run_id = factory, run_id
        self.interval_s, self.heartbeat_s = interval_s, heartbeat_s
        self.history: dict[str, list[float]] = {}
        self._last_write = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunReporter:
        self._thread = threading.Thread(target=self._beat, name=f"run-{self.run_id}-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                _update_run(self.factory, self.run_id, running_only=True, heartbeat_at=utcnow())
            except Exception:  # noqa: BLE001 - a missed heartbeat must not kill training; the next one retries
                log.exception("heartbeat of run %s failed", self.run_id)

    def __call__(self, event: ProgressEvent) -> None:
        """The `train()` progress callback: record the curve, write the row every `interval_s` and at the end."""
        for key, value in (("step", event.step), *event.loss.items(), ("lr", event.lr)):
            self.history.setdefault(key, []).append(value)
        now = time.monotonic()
        if now - self._last_write < self.interval_s and event.step < event.total_steps:
            return
        self._last_write = now
        written = _update_run(
            self.factory,
            self.run_id,
            running_only=True,
            progress=event.progress,
            step=event.step,
            total_steps=event.total_steps,
            eta_s=round(event.eta_s, 1),
            loss=event.loss,
            history=self.history,
            heartbeat_at=utcnow(),
        )
        if not written:
            raise RunCancelled(f"run {self.run_id} is no longer running (cancelled?); training stopped.")


# --- the job ---------------------------------------------------------------------------------------------------


def _start_run(factory: sessionmaker[Session], run_id: int) -> dict[str, Any]:
    """Mark the run running (queued, or already claimed by a worker) and return its raw params."""
    with transaction(factory) as session:
        run = session.get(TrainingRun, run_id, with_for_update=True)
        if run is None:
            raise NotFound(f"No training run with id {run_id}.")
        if run.status not in ("queued", "running"):
            raise InvalidInput(
                f"run {run_id} is {run.status}; only queued (or claimed) runs can be trained. Queue a new run instead."
            )
        now = utcnow()
        run.status, run.started_at, run.heartbeat_at, run.error = "running", run.started_at or now, now, None
        run.progress, run.step = 0.0, 0
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
        _update_run(
            factory, run_id, status="failed", error=text[:MAX_ERROR_CHARS], finished_at=utcnow(), heartbeat_at=utcnow()
        )
    except Exception:  # noqa: BLE001 - the original error matters more than a failed status write
        log.exception("could not mark run %s failed", run_id)


def run_folder(settings: Settings, run_id: int) -> Path:
    """`<runs_dir>/<run id>`: the run's snapshot and logs."""
    return settings.runs_dir / str(run_id)


def _snapshot(factory: sessionmaker[Session], run_id: int, settings: Settings) -> Snapshot:
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
        rows = vote_rows(session, settings=settings)
    staging = folder.with_name(f"{SNAPSHOT_STAGING_PREFIX}{uuid.uuid4().hex}")
    try:
        snapshot = save_snapshot(make_snapshot(rows), staging)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a no-op once renamed
    _update_run(
        factory,
        run_id,
        snapshot_path=str(folder),
        snapshot_fingerprint=snapshot.fingerprint,
        vote_watermark=snapshot.watermark,
    )
    return replace(snapshot, path=folder)


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


def run_training_job(factory: sessionmaker[Session], *, run_id: int, settings: Settings) -> ModelVersion | None:
    """Train, evaluate, publish and gate run `run_id`; the new version (None on non-main processes)."""
    state = PartialState()
    if not state.is_main_process:
        return _follow(factory, run_id=run_id, settings=settings)
    raw_params = _start_run(factory, run_id)  # an unknown or finished run raises here and changes nothing
    try:
        params = parse_params(raw_params)
        with RunReporter(factory, run_id) as reporter:
            snapshot = _snapshot(factory, run_id, settings)
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
    return version


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
