"""A version with the uncertainty and dimension heads: its σ and dimension scores reach the scoring service's items,
the reward server's reply and the Score tab; a version without them answers exactly as before."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.handlers.score import RESULT_COLUMNS, SIGMA_COLUMN, score_edits
from app.scoring import ScoringService
from tests.app.conftest import publish_model_dir
from tests.app.handler_support import add_users, as_user, make_deps
from tests.app.reward_support import distinct_items, item, reward_app
from trainer.heads import DIMENSIONS, add_extra_heads
from trainer.model import JointRewardModel
from trainer.prompting import build_example, collate
from trainer.registry.scores import stored_scores

TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def heads_model_dir(app_template, tmp_path_factory) -> Path:
    """The app's trained version with both extra heads added (its reward head, hence μ, unchanged)."""
    model = JointRewardModel.load(app_template.version_dir)
    model.jrm_config = replace(model.jrm_config, uncertainty_head=True, dimension_heads=DIMENSIONS)
    torch.manual_seed(0)
    add_extra_heads(model, hidden_size=model.hidden_size, head_hidden=model.hidden_size, activation="gelu")
    with torch.no_grad():  # a σ that depends on the input, not only the head's constant start
        model.uncertainty_head.mlp[2].weight.normal_(std=0.5)
    return model.eval().save(tmp_path_factory.mktemp("heads") / "model")


@pytest.fixture
def heads_service(app_store, heads_model_dir):
    publish_model_dir(app_store.factory, app_store.settings, heads_model_dir)
    service = ScoringService(app_store.factory, app_store.settings)
    assert service.refresh()
    yield service
    service.stop()


def expected_scores(folder: Path, triples) -> list[tuple[float, float | None, dict | None]]:
    model = JointRewardModel.load(folder)
    examples = [build_example(model.processor, source=s, edited=e, instruction=i) for s, e, i in triples]
    return model.score_all(collate(examples, model.processor)).rows()


def test_scored_items_carry_sigma_and_dimension_scores(scoring_service, heads_service, heads_model_dir):
    # scoring_service comes first: it loads v0001 before heads_service promotes the version with heads
    triples = distinct_items(3)
    outcomes = heads_service.score_items(triples)
    for outcome, (mu, sigma, dims) in zip(outcomes, expected_scores(heads_model_dir, triples), strict=True):
        assert outcome.score == pytest.approx(mu, abs=TOLERANCE) and outcome.sigma == pytest.approx(sigma, abs=1e-6)
        assert outcome.dimensions.keys() == set(DIMENSIONS)
        assert all(outcome.dimensions[k] == pytest.approx(dims[k], abs=TOLERANCE) for k in DIMENSIONS)
    assert len({round(o.sigma, 6) for o in outcomes}) > 1  # σ is per input
    plain = scoring_service.score_items(triples)  # the version without heads
    assert all(o.sigma is None and o.dimensions is None for o in plain)
    assert [o.score for o in plain] == pytest.approx([o.score for o in outcomes], abs=TOLERANCE)  # same μ


def test_candidate_scores_keep_sigma_in_memory_and_in_the_scores_table(heads_service, app_store):
    computed = heads_service.score_candidates([1, 2])
    assert all(item.sigma is not None and item.dimensions for item in computed.values())
    with app_store.factory() as session:  # the table is written with σ and the dimension scores too
        stored = stored_scores(session, version_id=computed[1].version_id, candidate_ids=[1, 2])
        assert all(row.sigma is not None and row.dimensions for row in stored.values()) and set(stored) == {1, 2}
    assert heads_service.score_candidates([1, 2]) == computed  # a memory hit keeps them
    restarted = ScoringService(app_store.factory, app_store.settings)
    try:
        assert restarted.refresh()
        from_table = restarted.score_candidates([1, 2])  # no forward: σ and the dimensions come back from the table
        for i, s in from_table.items():
            assert s.score == pytest.approx(computed[i].score) and s.sigma == pytest.approx(computed[i].sigma)
            assert s.dimensions == pytest.approx(computed[i].dimensions)
    finally:
        restarted.stop()


def test_the_reward_server_reply_has_sigma_and_dimensions_only_when_the_version_has_them(
    app_store, scoring_service, heads_service
):
    body = {"items": [item(*t, i) for i, t in enumerate(distinct_items(2))]}
    with TestClient(reward_app(app_store, heads_service)) as client:
        reply = client.post("/v1/score", json=body)
    assert reply.status_code == 200, reply.text
    for result in reply.json()["results"]:
        assert result["sigma"] > 0 and set(result["dimensions"]) == set(DIMENSIONS)
    with TestClient(reward_app(app_store, scoring_service)) as client:
        plain = client.post("/v1/score", json=body).json()["results"]
    assert all(set(result) == {"id", "score"} for result in plain)  # as before the heads existed


def test_the_score_tab_shows_score_plus_minus_sigma_and_the_dimensions(app_store, heads_service, tmp_path):
    paths = []
    for name, colour in (("source", "gray"), ("red", "red"), ("blue", "blue")):
        Image.new("RGB", (40, 32), colour).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    add_users(app_store, viewer="annotator")
    deps = make_deps(app_store, scoring=heads_service)
    view = score_edits(deps, paths[0], "make it red", paths[1:], False, as_user("viewer"))
    columns = [*RESULT_COLUMNS[:3], SIGMA_COLUMN, RESULT_COLUMNS[3], *(n.replace("_", " ") for n in DIMENSIONS)]
    assert list(view.table.columns) == columns and (view.table[SIGMA_COLUMN] > 0).all()
    assert all(" ± " in caption for _, caption in view.gallery) and "uncertainty" in view.status
