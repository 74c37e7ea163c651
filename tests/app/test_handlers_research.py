"""Research handlers: statistics, queued retrains, live run progress, versions, promote/rollback, exports, roles."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
from sqlalchemy import select

from app.handlers import research
from app.handlers.session import start_session
from app.scoring import ScoringService
from storage.db import transaction
from storage.models import TrainingRun, User
from tests.app.conftest import publish_model_dir
from tests.app.handler_support import add_users, as_user, make_deps
from tests.trainer.test_gate import inputs
from trainer.gate import GateConfig, decide
from trainer.registry import apply_promotion_gate
from trainer.scorer import load_scorer_model


@pytest.fixture
def deps(app_store):
    add_users(app_store, res="researcher", ann="annotator", boss="admin")
    return make_deps(app_store)


def test_overview_has_the_dataset_statistics_and_votes_over_time(deps):
    overview = research.research_overview(deps, as_user("res"))
    for label in ("tasks", "votes", "tie rate", "rationale coverage", "annotators"):
        assert label in overview.summary
    assert list(overview.over_time.columns) == ["time", "provenance", "votes"]
    assert overview.over_time["votes"].sum() > 0 and "votes over time counted per" in overview.summary
    assert research.research_overview(deps, as_user("boss")).summary == overview.summary  # admins too


def test_a_retrain_is_queued_with_the_form_parameters(deps):
    status = research.trigger_retrain(deps, 0.0, 2, " tiny ", 5, as_user("res"))
    with deps.factory() as session:
        run = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc())).first()
        researcher = session.scalar(select(User.id).where(User.name == "res"))
    assert f"Queued run {run.id}" in status and "No worker runs in this app process" in status
    assert (run.status, run.trigger, run.requested_by_id) == ("queued", "manual", researcher)
    assert run.params == {"lm_weight": 0.0, "epochs": 2, "backbone": "tiny", "max_steps": 5}


@pytest.mark.parametrize(
    ("form", "message"),
    [((-1.0, 3, "tiny", 0), "lm_weight must be &gt;= 0"), ((0.5, 2.5, "tiny", 0), "epochs must be a whole number"),
     ((0.5, 0, "tiny", 0), "epochs must be a whole number &gt;= 1")],
)
def test_bad_retrain_parameters_are_refused_and_nothing_is_queued(deps, form, message):
    with deps.factory() as session:
        before = session.scalar(select(TrainingRun.id).order_by(TrainingRun.id.desc()).limit(1))
    with pytest.raises(gr.Error, match=message):
        research.trigger_retrain(deps, *form, as_user("res"))
    with deps.factory() as session:
        assert session.scalar(select(TrainingRun.id).order_by(TrainingRun.id.desc()).limit(1)) == before


def test_runs_show_live_progress_and_loss_curves(deps):
    with transaction(deps.factory) as session:
        run = TrainingRun(status="running", trigger="manual", params={}, progress=0.4, step=4, total_steps=10,
                          eta_s=75.0, loss={"total": 0.61, "pref": 0.6, "lm": 0.02},
                          history={"step": [1, 2], "total": [0.9, 0.7], "pref": [0.8, 0.6], "lm": [0.2, 0.1]},
                          error="<script>alert(1)</script>")
        session.add(run)
        session.flush()
        run_id = run.id
    view = research.runs_view(deps, None, as_user("res"))
    assert 'aria-valuenow="40"' in view.table and ">4/10<" in view.table and "1m 15s" in view.table
    assert "<script>" not in view.table and "&lt;script&gt;" in view.table
    assert f"run {run_id}" in view.caption
    assert len(view.curves) == 6 and set(view.curves["curve"]) == {"total", "pref", "lm"}
    older = research.runs_view(deps, 1, as_user("res"))  # the fixture's training run, finished
    assert "run 1 (succeeded)" in older.caption
    assert research.cancel_training_run(deps, run_id, as_user("res")) == f"<p>Run {run_id} is cancelled.</p>"
    with pytest.raises(gr.Error, match="already cancelled"):
        research.cancel_training_run(deps, run_id, as_user("res"))


def test_versions_side_by_side_then_promote_and_roll_back(app_store, scoring_service, shifted_model_dir):
    add_users(app_store, res="researcher")
    deps = make_deps(app_store, scoring=scoring_service)
    _, second = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir, promote=False)
    view = research.versions_view(deps, as_user("res"))
    assert list(view.table["version"]) == [second, app_store.version_name]
    assert list(view.table["status"]) == ["candidate", "active"]
    assert "held-out acc." in view.table.columns and view.names.choices[0][0] == second
    promoted = research.promote(deps, second, "looks better", as_user("res"))
    assert f"{second} is now active" in promoted.status
    assert promoted.table.set_index("version").loc[second, "status"] == "active"
    assert "looks better (promoted by res)" in promoted.table.set_index("version").loc[second, "reason"]
    assert scoring_service.version[1] == second  # the scorer switched without waiting for its poller
    rolled = research.roll_back(deps, as_user("res"))
    assert f"{app_store.version_name} is active again" in rolled.status
    assert scoring_service.version[1] == app_store.version_name
    with pytest.raises(gr.Error, match="Choose a version"):
        research.promote(deps, "v9999", "a reason", as_user("res"))
    for missing in ("", "   ", None):  # the researcher's name is appended, so the check must come before it
        with pytest.raises(gr.Error, match="Give a reason for promoting by hand"):
            research.promote(deps, second, missing, as_user("res"))
    assert scoring_service.version[1] == app_store.version_name  # nothing changed


def test_a_version_that_fails_to_load_shows_in_the_header_and_the_research_tab(app_store, shifted_model_dir):
    add_users(app_store, res="researcher", ann="annotator")
    first = app_store.version_name
    _, second = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir, promote=False)

    def loader(path: Path, *, device: str):  # files that hash-check but do not load (e.g. a changed LoRA base)
        if path.name == second:
            raise RuntimeError("the LoRA base changed")
        return load_scorer_model(path, settings=app_store.settings, device=device)

    service = ScoringService(app_store.factory, app_store.settings, loader=loader)
    try:
        assert service.refresh() is True
        deps = make_deps(app_store, scoring=service)
        promoted = research.promote(deps, second, "looks better", as_user("res"))
        warning = f"The active version {second} failed to load at "
        assert f"{second} is now active" in promoted.status and warning in promoted.status
        assert "(the LoRA base changed); still serving " + first in promoted.status
        assert service.version[1] == first, "the previous version keeps serving"
        failed = "active (failed to load: the LoRA base changed)"
        assert promoted.table.set_index("version").loc[second, "status"] == failed
        assert research.versions_view(deps, as_user("res")).table.set_index("version").loc[second, "status"] == failed
        header = start_session(deps, as_user("res")).who
        assert warning in header and "the LoRA base changed" in header and f"still serving {first}" in header
        annotator = start_session(deps, as_user("ann")).who
        assert warning in annotator and "LoRA" not in annotator, "the error (it may name paths) is for researchers"
        rolled = research.roll_back(deps, as_user("res"))
        assert f"{first} is active again" in rolled.status and "failed to load" not in rolled.status
        assert "jrm-alert" not in start_session(deps, as_user("res")).who
        assert list(rolled.table["status"]) == ["retired", "active"]
    finally:
        service.stop()


def test_a_version_the_gate_rejected_shows_why(app_store, shifted_model_dir):
    add_users(app_store, res="researcher")
    deps = make_deps(app_store)
    version_id, name = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir, promote=False)
    # Measured as trainer.judge would: 0.5 held-out accuracy against a pixel rule at 0.75 (test_gate's hand numbers).
    below = inputs([1, 0, 1, 0], rules={"changed more wins": [1, 1, 1, 0]}, active=[1, 1, 0, 0],
                   active_id=app_store.version_id, active_name=app_store.version_name)  # fmt: skip
    decision = decide(below, GateConfig(n_resamples=200))
    with transaction(app_store.factory) as session:
        apply_promotion_gate(session, version_id=version_id, decision=decision, settings=app_store.settings)

    row = research.versions_view(deps, as_user("res")).table.set_index("version").loc[name]

    assert row["status"] == "rejected" and row["reason"] == decision.reason
    assert row["reason"].endswith("'changed more wins' 0.75: \u22120.25 … \u22120.25) does not beat the floor")
    assert row["gate floor"] == "changed more wins 0.75"
    assert row["margin over floor (95 % CI)"] == "\u22120.25 … \u22120.25"
    assert row["vs active (95 % CI)"] == f"{app_store.version_name}: +0.00 … +0.00"


def test_version_rows_without_a_gate_record_leave_the_gate_columns_blank():
    assert research._gate_cells({"heldout_accuracy": 0.6}) == ["", "", ""]
    assert research._gate_cells(None) == ["", "", ""]
    first = {"gate": {"floor": {"rule": "chance", "accuracy": 0.5}, "diff_vs_floor_ci95": [0.01, 0.2], "active": None}}
    assert research._gate_cells(first) == ["chance 0.50", "+0.01 … +0.20", "–"]


@pytest.mark.parametrize("kind", ["parquet", "trl", "editreward"])
def test_exports_produce_a_downloadable_file(deps, kind):
    path = Path(research.export_votes(deps, kind, as_user("res")))
    assert path.is_file() and path.parent == deps.settings.data_dir / "exports"
    if kind == "editreward":
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            records = json.loads(archive.read(next(n for n in names if n.endswith("votes.json"))))
        assert records and any("/images/" in n for n in names)
    else:
        assert len(pd.read_parquet(path)) > 0


RESEARCH_CALLS = [
    ("research_overview", ()),
    ("trigger_retrain", (0.5, 1, "tiny", 1)),
    ("runs_view", (None,)),
    ("cancel_training_run", (1,)),
    ("versions_view", ()),
    ("promote", ("v0001", "because")),
    ("roll_back", ()),
    ("export_votes", ("parquet",)),
]


@pytest.mark.parametrize(("name", "args"), RESEARCH_CALLS, ids=[name for name, _ in RESEARCH_CALLS])
def test_annotators_are_refused_every_research_handler(deps, name, args):
    with pytest.raises(gr.Error, match="researcher role required"):
        getattr(research, name)(deps, *args, as_user("ann"))
    with deps.factory() as session:
        assert session.scalar(select(TrainingRun.id).where(TrainingRun.status == "queued")) is None


def test_paused_automatic_retrains_are_shown_in_the_runs_table_and_the_researchers_header(deps, app_store):
    from app.handlers.session import start_session
    from storage.models import utcnow

    with transaction(app_store.factory) as session:
        for _ in range(5):
            session.add(TrainingRun(status="failed", trigger="threshold", error="CUDA out of memory\ntraceback",
                                    finished_at=utcnow()))
    view = research.runs_view(deps, None, as_user("res"))
    assert "automatic retrains paused after 5 failures in a row" in view.table and "CUDA out of memory" in view.table
    assert "automatic retrains paused" in start_session(deps, as_user("res")).who
    assert "automatic retrains paused" not in start_session(deps, as_user("ann")).who
