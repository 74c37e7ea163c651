"""Research tab (researchers and admins): dataset statistics, retrains with live progress, versions, exports.

Every handler resolves the caller and refuses anyone below researcher, whatever the page shows. Retrains are
only queued here (`trainer.runs_queue.enqueue_run`); the worker's scheduler claims and trains them in its own
process, so the web server never trains. Progress is read back from the run rows every couple of seconds.
"""

from __future__ import annotations

import math
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple

import gradio as gr
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import require_researcher
from app.deps import Deps
from app.handlers import user_errors
from app.handlers.session import scorer_alert
from app.render import duration, html_table, progress_bar, text
from app.scoring import LoadFailure
from storage.db import transaction
from storage.exporters import export_editreward, export_hf, export_trl
from storage.models import ModelVersion, TrainingRun, User
from storage.provenance import describe_selection
from storage.stats import dataset_stats, votes_over_time
from trainer.backbones import preset_names
from trainer.registry import list_versions, promote_version, rollback
from trainer.registry.files import VersionFilesError, verify_version_files, version_dir
from trainer.registry.switch import rollback_target
from trainer.runs_backoff import automatic_runs_alert
from trainer.runs_queue import cancel_run, enqueue_run, get_run, list_runs

RUNS_SHOWN = 15
CURVES = ("total", "pref", "lm")  # loss curves in a run's history
BACKBONES = preset_names()  # offline presets (pretrained first); also a hub id or folder
EXPORT_KINDS = {"parquet": "Hugging Face dataset (parquet)", "trl": "TRL chosen/rejected (parquet)",
                "editreward": "EditReward JSON + images (zip)"}
# (column, dotted path into a version's metrics): the held-out evaluation, side by side per version.
METRIC_COLUMNS = [
    ("held-out acc.", "heldout_accuracy"),
    ("acc. with ties", "accuracy_with_ties.accuracy"),
    ("ECE", "calibration.ece"),
    ("eff. rank", "effective_rank"),
    ("group acc.", "group_accuracy.exact"),
    ("swap both correct", "instruction_swap.both_correct"),
    ("held-out pairs", "n_pairs"),
    ("train votes", "train_votes"),
]
# The promotion gate's record (`metrics["gate"]`, docs/registry.md): the floor it had to beat and the intervals.
GATE_COLUMNS = ["gate floor", "margin over floor (95 % CI)", "vs active (95 % CI)"]
# The status and its reason (the gate's, or the researcher's who promoted by hand) first: the first thing to read.
VERSION_COLUMNS = ["version", "status", "reason", *GATE_COLUMNS, "run", "backbone", "λ", "created",
                   *(c for c, _ in METRIC_COLUMNS)]


class Overview(NamedTuple):
    summary: str  # HTML, numbers only
    over_time: pd.DataFrame  # time (UTC hour or day), provenance, votes


class RunsView(NamedTuple):
    table: str  # HTML with progress bars, escaped cells
    curves: pd.DataFrame  # step, loss, curve (long format for a LinePlot)
    caption: str  # HTML


class VersionsView(NamedTuple):
    table: pd.DataFrame  # VERSION_COLUMNS, newest first
    names: Any  # a gr.Dropdown update with the version names


class SwitchView(NamedTuple):
    """After a promotion or rollback: what happened, and the versions as they are now."""

    status: str  # HTML, escaped
    table: pd.DataFrame
    names: Any


# --- statistics ----------------------------------------------------------------------------------------------


def research_overview(deps: Deps, request: gr.Request) -> Overview:
    """Dataset statistics and votes over time (per hour when they span under two days, else per day)."""
    require_researcher(deps, request)
    with deps.reader() as session:
        stats = dataset_stats(session, settings=deps.settings)
        unit, buckets = votes_over_time(session)
    choices = ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in stats.votes_by_choice.items())
    rows = [
        ("tasks", stats.tasks), ("candidates", stats.candidates), ("pairs", stats.pairs), ("votes", stats.votes),
        ("annotators", stats.annotators), ("votes by choice", choices), ("tie rate (tie + both bad)",
        f"{stats.tie_rate:.1%}"), ("rationale coverage", f"{stats.rationale_coverage:.1%}"),
        (f"pairs with ≥ {deps.settings.overlap_target} votes", stats.pairs_at_target),
    ]
    rows.append(("votes over time counted per", unit))
    over_time = pd.DataFrame(buckets, columns=["time", "provenance", "votes"])
    return Overview(html_table(["statistic", "value"], rows), over_time)


# --- retrains ------------------------------------------------------------------------------------------------


def retrain_params(lm_weight: float | None, epochs: float | None, backbone: str | None,
                   max_steps: float | None) -> dict[str, Any]:
    """The run parameters the form describes (blank fields keep the trainer's defaults)."""
    params: dict[str, Any] = {}
    if lm_weight is not None:
        params["lm_weight"] = float(lm_weight)
    if epochs is not None:
        params["epochs"] = _whole(epochs, "epochs")
    if backbone and backbone.strip():
        params["backbone"] = backbone.strip()
    if max_steps:  # 0 or blank: no cap
        params["max_steps"] = _whole(max_steps, "max steps")
    return params


def _whole(value: float, name: str) -> int:
    if not math.isfinite(value) or value != int(value):
        raise gr.Error(f"{name} must be a whole number, got {value}.")
    return int(value)


def trigger_retrain(deps: Deps, lm_weight: float | None, epochs: float | None, backbone: str | None,
                    max_steps: float | None, request: gr.Request) -> str:
    """Queue a manual retrain with the given λ, epochs, backbone and step cap; the worker picks it up."""
    user = require_researcher(deps, request)
    params = retrain_params(lm_weight, epochs, backbone, max_steps)
    with user_errors(), transaction(deps.factory) as session:
        run = enqueue_run(session, params=params, requested_by_id=user.id, trigger="manual")
        run_id = run.id
    worker = "" if deps.worker is not None else " No worker runs in this app process: start `python -m trainer.worker`."
    return f"<p>Queued run {run_id}.{text(worker)}</p>"


def cancel_training_run(deps: Deps, run_id: float | None, request: gr.Request) -> str:
    """Cancel a queued or running run."""
    require_researcher(deps, request)
    if run_id is None:
        raise gr.Error("Enter the number of the run to cancel.")
    with user_errors(), transaction(deps.factory) as session:
        run = cancel_run(session, run_id=_whole(run_id, "run"))
        return f"<p>Run {run.id} is cancelled.</p>"


def _run_row(run: TrainingRun, requested_by: str | None, version: str | None) -> list[object]:
    steps = f"{run.step}/{run.total_steps}" if run.total_steps else str(run.step or "–")
    eta = duration(run.eta_s) if run.status == "running" else "–"
    loss = f"{run.loss['total']:.4f}" if isinstance(run.loss, dict) and "total" in run.loss else "–"
    error = (run.error or "")[:200]
    votes = describe_selection(run.vote_selection) if run.vote_selection else "–"
    return [run.id, run.status, run.trigger, requested_by or "–", progress_bar(run.progress or 0.0), steps, eta,
            loss, votes, f"{run.created_at:%Y-%m-%d %H:%M}", version or "–", error]


def runs_table(session: Session) -> str:
    """HTML table of the newest runs with progress bars, step, ETA, latest loss, and the version each produced."""
    runs = list_runs(session, limit=RUNS_SHOWN)
    requesters = [r.requested_by_id for r in runs if r.requested_by_id is not None]
    users = dict(session.execute(select(User.id, User.name).where(User.id.in_(requesters))).all())
    produced = select(ModelVersion.run_id, ModelVersion.name).where(ModelVersion.run_id.in_([r.id for r in runs]))
    versions = dict(session.execute(produced).all())
    rows = [_run_row(run, users.get(run.requested_by_id), versions.get(run.id)) for run in runs]
    headers = ["run", "status", "trigger", "by", "progress", "step", "ETA", "loss", "votes", "created", "version",
               "error"]
    return html_table(headers, rows) if rows else "<p>No training runs yet.</p>"


def loss_curves(run: TrainingRun | None) -> pd.DataFrame:
    """The run's recorded loss curves in long format: one row per (step, curve)."""
    history = (run.history if run is not None else None) or {}
    steps = history.get("step") or []
    rows = [(step, float(value), name) for name in CURVES for step, value in zip(steps, history.get(name) or [],
                                                                                    strict=False)]
    return pd.DataFrame(rows, columns=["step", "loss", "curve"])


def runs_view(deps: Deps, run_id: float | None, request: gr.Request) -> RunsView:
    """The runs table and the loss curves of run `run_id` (blank: the newest run)."""
    require_researcher(deps, request)
    with user_errors(), deps.reader() as session:
        alert = automatic_runs_alert(session)
        table = (f'<div class="jrm-alert" role="alert">{text(alert)}</div>' if alert else "") + runs_table(session)
        if run_id:
            run = get_run(session, run_id=_whole(run_id, "run"))
        else:
            run = next(iter(list_runs(session, limit=1)), None)
        curves = loss_curves(run)
        caption = f"<p>Loss curves of run {run.id} ({text(run.status)}).</p>" if run else "<p>No run yet.</p>"
    return RunsView(table, curves, caption)


# --- versions ------------------------------------------------------------------------------------------------


def _metric(metrics: dict[str, Any] | None, path: str) -> float | None:
    value: Any = metrics or {}
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return round(float(value), 4)


def _interval(gate: dict[str, Any], key: str) -> str:
    """The gate's [low, high] at `key` as "−0.12 … −0.02"; "" when it has none."""
    bounds = gate.get(key)
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(isinstance(b, int | float) for b in bounds):
        return ""
    return " … ".join(f"{b:+.2f}".replace("-", "−") for b in bounds)


def _gate_cells(metrics: dict[str, Any] | None) -> list[str]:
    """The GATE_COLUMNS of one version: blank for a version the gate never judged (published with promote off)."""
    gate = (metrics or {}).get("gate")
    if not isinstance(gate, dict):
        return [""] * len(GATE_COLUMNS)
    floor = gate.get("floor") if isinstance(gate.get("floor"), dict) else {}
    accuracy = _metric(floor, "accuracy")
    floor_cell = f"{floor.get('rule')} {accuracy:.2f}" if floor.get("rule") and accuracy is not None else ""
    active = gate.get("active") if isinstance(gate.get("active"), dict) else None
    versus = f"{active.get('name')}: {_interval(gate, 'diff_vs_active_ci95')}" if active else "–"
    return [floor_cell, _interval(gate, "diff_vs_floor_ci95"), versus]


def _status_cell(version: ModelVersion, failure: LoadFailure | None) -> str:
    """The status, and for the active version the scorer could not load, why: "active (failed to load: …)"."""
    if version.status == "active" and failure is not None and failure.version_id == version.id:
        return f"active (failed to load: {failure.short_error})"
    return version.status


def _version_row(version: ModelVersion, failure: LoadFailure | None = None) -> list[object]:
    lm_weight = ((version.config or {}).get("jrm") or {}).get("lm_weight")
    metrics = [_metric(version.metrics, path) for _, path in METRIC_COLUMNS]
    return [version.name, _status_cell(version, failure), version.reason or "", *_gate_cells(version.metrics),
            version.run_id, version.backbone, lm_weight, f"{version.created_at:%Y-%m-%d %H:%M}", *metrics]


def _versions(deps: Deps, session: Session) -> VersionsView:
    versions = list_versions(session)
    failure = None if deps.scoring is None else deps.scoring.load_failure  # from memory
    table = pd.DataFrame([_version_row(v, failure) for v in versions], columns=VERSION_COLUMNS)
    names = [v.name for v in versions]
    return VersionsView(table, gr.Dropdown(choices=names, value=names[0] if names else None))


def versions_view(deps: Deps, request: gr.Request) -> VersionsView:
    """Every version with its held-out metrics and the gate's verdict (status, reason, floor, intervals), newest
    first."""
    require_researcher(deps, request)
    with deps.reader() as session:
        return _versions(deps, session)


def _version_id(session: Session, name: str | None) -> int:
    version_id = session.scalar(select(ModelVersion.id).where(ModelVersion.name == (name or "").strip()))
    if version_id is None:
        raise gr.Error("Choose a version to promote from the list.")
    return version_id


def promote(deps: Deps, name: str | None, reason: str | None, request: gr.Request) -> SwitchView:
    """Make version `name` the active one (a researcher's decision, recorded with the reason)."""
    user = require_researcher(deps, request)
    if not isinstance(reason, str) or not reason.strip():  # checked here: the name appended below is never empty
        raise gr.Error("Give a reason for promoting by hand (e.g. “better on held-out tasks”); nothing changed.")
    with user_errors(), deps.reader() as session:
        version_id = _version_id(session, name)
        chosen = session.get(ModelVersion, version_id)
    _verify(deps, chosen)  # a read of the whole checkpoint, with no transaction open
    with user_errors(), transaction(deps.factory) as session:
        version = promote_version(session, version_id=version_id, reason=f"{reason.strip()} (promoted by {user.name})",
                                  settings=deps.settings, verified=True)
        message = f"<p>{text(version.name)} is now active.</p>"
    _refresh_scorer(deps)
    return _after_switch(deps, message)


def roll_back(deps: Deps, request: gr.Request) -> SwitchView:
    """Re-activate the version that was active before the current one."""
    require_researcher(deps, request)
    with user_errors(), deps.reader() as session:
        target = rollback_target(session)
    if target is not None:
        _verify(deps, target)  # with no transaction open
    with user_errors(), transaction(deps.factory) as session:
        restored = rollback(session, settings=deps.settings, verified_id=target.id if target else None)
        message = f"<p>Rolled back: {text(restored.name)} is active again.</p>"
    _refresh_scorer(deps)
    return _after_switch(deps, message)


def _verify(deps: Deps, version: ModelVersion) -> None:
    """Hash-check a version's files before the switch's transaction; `gr.Error` when they are missing or corrupt."""
    try:
        verify_version_files(version_dir(deps.settings, version))
    except VersionFilesError as exc:
        raise gr.Error(f"{version.name} cannot be activated: {exc}") from None


def _after_switch(deps: Deps, message: str) -> SwitchView:
    """The switch's message, with a warning when the scorer could not load the version now active."""
    with deps.reader() as session:
        return SwitchView(message + scorer_alert(deps, detail=True), *_versions(deps, session))


def _refresh_scorer(deps: Deps) -> None:
    # The scorer's poller would notice within its interval; asking now makes the switch visible at once. A rollback
    # to the version served before swaps at once (the service keeps it in memory); another version is loaded first,
    # the current one serving until it is in, and a failed load is kept by the service (`_after_switch` shows it).
    if deps.scoring is not None:
        deps.scoring.refresh()


# --- exports -------------------------------------------------------------------------------------------------


def export_votes(deps: Deps, kind: Literal["parquet", "trl", "editreward"], request: gr.Request) -> str:
    """Export every vote in `kind`'s format to a file under the data folder; returns its path for download."""
    require_researcher(deps, request)
    if kind not in EXPORT_KINDS:
        raise gr.Error(f"Choose an export format: {', '.join(EXPORT_KINDS)}.")
    folder = deps.settings.data_dir / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    # The folder is among Gradio's allowed paths: an unguessable name keeps other logged-in users from fetching it.
    stem = f"votes-{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(8)}"
    with user_errors(), deps.reader() as session:
        if kind == "parquet":
            export_hf(session, out=folder / f"{stem}.parquet", settings=deps.settings, parquet=True)
            return str(folder / f"{stem}.parquet")
        if kind == "trl":
            export_trl(session, out=folder / f"{stem}.parquet", settings=deps.settings)
            return str(folder / f"{stem}.parquet")
        return _editreward_zip(session, deps, folder, stem)


def _editreward_zip(session: Session, deps: Deps, folder: Path, stem: str) -> str:
    """EditReward JSON and its images, zipped: the JSON names images relative to the zip's root."""
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        root = Path(scratch) / stem
        export_editreward(session, out=root / "votes.json", images_dir=root / "images", settings=deps.settings)
        return shutil.make_archive(str(folder / stem), "zip", root_dir=scratch, base_dir=stem)
