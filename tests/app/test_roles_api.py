"""Roles are enforced on the server: the research and admin endpoints refuse an annotator who calls them directly.

The app is served in-process with authentication on (the store's users, Gradio's log-in), and called through
`gradio_client` logged in as each role, exactly as a script outside the browser would call it.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from storage.models import TrainingRun, User, Vote  # noqa: E402
from tests.app.handler_support import PASSWORD, add_users, make_deps, served_app  # noqa: E402

RESEARCH_ENDPOINTS = [
    ("/dataset_stats", {}),
    ("/trigger_retrain", {"lm_weight": 0.5, "epochs": 1, "backbone": "tiny", "max_steps": 1}),
    ("/training_runs", {"run_id": None}),
    ("/cancel_run", {"run_id": 1}),
    ("/model_versions", {}),
    ("/promote_version", {"name": "v0001", "reason": "I say so"}),
    ("/rollback", {}),
    ("/export_votes", {"kind": "parquet"}),
    ("/version_accuracy", {}),
    ("/annotator_quality", {}),
    ("/clear_flag", {"name": "ann", "reason": "checked by hand"}),
]
ADMIN_ENDPOINTS = [
    ("/list_users", {}),
    ("/create_user", {"name": "mallory", "role": "admin", "password": "pw"}),
    ("/set_role", {"name": "ann", "role": "admin"}),
    ("/deactivate_user", {"name": "boss"}),
]


@pytest.fixture
def served(app_store) -> Iterator[tuple[str, object]]:
    """The app on a free loopback port, auth on; (url, deps)."""
    add_users(app_store, ann="annotator", res="researcher", boss="admin")
    deps = make_deps(app_store)
    with served_app(deps) as blocks:
        yield blocks.local_url, deps


def _client(url: str, name: str) -> Client:
    return Client(url, auth=(name, PASSWORD), verbose=False, download_files=False, analytics_enabled=False)


@pytest.mark.parametrize("app_store", ["sqlite"], indirect=True)
def test_an_annotator_is_refused_every_research_and_admin_endpoint(served):
    url, deps = served
    client = _client(url, "ann")
    for endpoint, arguments in RESEARCH_ENDPOINTS + ADMIN_ENDPOINTS:
        needed = "researcher" if (endpoint, arguments) in RESEARCH_ENDPOINTS else "admin"
        with pytest.raises(AppError, match=f"{needed} role required"):
            client.predict(**arguments, api_name=endpoint)
    with deps.factory() as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun).where(TrainingRun.status == "queued")) == 0
        assert session.scalar(select(User).where(User.name == "mallory")) is None
        assert session.scalar(select(User.role).where(User.name == "ann")) == "annotator"
        assert session.scalar(select(User.active).where(User.name == "boss")) is True


@pytest.mark.parametrize("app_store", ["sqlite"], indirect=True)
def test_each_role_can_call_its_own_endpoints(served):
    url, deps = served
    annotator = _client(url, "ann")
    token = annotator.predict(api_name="/next_pair")[-1]  # the pair's token is the last output
    annotator.predict(choice="tie", rationale="both kept the colours", rate_dimensions=False,
                      instruction_following=0, quality=0, preservation=0, pair_token=token, api_name="/submit_vote")
    status = _client(url, "res").predict(lm_weight=0.0, epochs=1, backbone="tiny", max_steps=2,
                                          api_name="/trigger_retrain")
    assert "Queued run" in status
    admin = _client(url, "boss")
    message, _ = admin.predict(name="carol", role="annotator", password="pw", api_name="/create_user")
    assert "Created carol" in message
    with deps.factory() as session:
        ann = session.scalar(select(User.id).where(User.name == "ann"))
        vote = session.scalar(select(Vote).where(Vote.annotator_id == ann))
        assert (vote.choice, vote.rationale) == ("tie", "both kept the colours")
        assert session.scalar(select(TrainingRun.params).where(TrainingRun.status == "queued"))["lm_weight"] == 0.0


@pytest.mark.parametrize("app_store", ["sqlite"], indirect=True)
def test_a_wrong_password_does_not_log_in(served):
    url, _ = served
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=("ann", "wrong"), verbose=False, download_files=False, analytics_enabled=False)
