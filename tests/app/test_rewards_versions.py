"""Versions in the reward server: following the promoted one across a promotion, pinning one, unknown and broken
versions, and the inference thread never mixing two versions in one forward."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from fastapi.testclient import TestClient

from app.scoring import ScoringService, VersionLoading, VersionUnavailable
from app.scoring.batching import Batcher
from app.scoring.pinned import PinnedVersions
from app.scoring.versions import Serving
from storage.errors import NotFound
from storage.settings import load_settings
from tests.app.conftest import SHIFT, publish_model_dir
from tests.app.reward_support import distinct_items, item, reward_app, reward_service
from trainer.registry import files_sha256
from trainer.scorer import load_scorer_model

TOLERANCE = 1e-5
LOAD_TIMEOUT_S = 120.0
SCORER_SETTINGS = load_settings(environ={})  # float32 on CPU


@pytest.fixture
def service(app_store) -> Iterator[ScoringService]:
    service = reward_service(app_store)
    yield service
    service.stop()


def post(client: TestClient, items: list[dict], version: str | None = None):
    body = {"items": items} if version is None else {"items": items, "version": version}
    return client.post("/v1/score", json=body)


def test_following_swaps_on_promotion_while_a_pinned_request_keeps_its_version(app_store, service, shifted_model_dir):
    items = [item(*t) for t in distinct_items(3)]
    with TestClient(reward_app(app_store, service), raise_server_exceptions=False) as client:
        before = post(client, items).json()
        assert before["version"] == app_store.version_name
        pinned_now = post(client, items, version=app_store.version_name).json()  # the serving model: no load
        assert pinned_now["scores"] == before["scores"]
        new_id, new_name = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
        assert post(client, items).json()["version"] == app_store.version_name, "no swap before the poll"
        assert service.refresh() is True
        after = post(client, items).json()
        assert (after["version"], after["version_id"]) == (new_name, new_id)
        assert after["scores"] == pytest.approx([s + SHIFT for s in before["scores"]], abs=TOLERANCE)
        assert after["model_sha256"] == files_sha256(app_store.settings.registry_dir / new_name)
        assert after["model_sha256"] != before["model_sha256"]
        previous = post(client, items, version=app_store.version_name).json()  # the previous model: still in memory
        assert previous["version"] == app_store.version_name and previous["scores"] == before["scores"]
        assert client.get("/v1/version").json()["pinned"] == [], "answered by the previous model, not a pinned copy"
        _, third = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
        assert service.refresh() is True  # the first model is dropped now (two swaps back)
        loading = post(client, items, version=app_store.version_name)  # no longer in memory: loaded in the background
        assert loading.status_code == 503 and loading.headers["Retry-After"] == "2"
        assert loading.json()["error"]["code"] == "version_loading"
        service.wait_for_version(app_store.version_name, LOAD_TIMEOUT_S)
        pinned = post(client, items, version=app_store.version_name).json()
        assert pinned["version"] == app_store.version_name and pinned["model_sha256"] == before["model_sha256"]
        assert pinned["scores"] == pytest.approx(before["scores"], abs=TOLERANCE)
        described = client.get("/v1/version").json()
        assert described["following"] is True and described["serving"]["version"] == third
        assert [p["version"] for p in described["pinned"]] == [app_store.version_name]


def test_a_server_pinned_by_version_is_ready_once_loaded_and_ignores_promotions(app_store, shifted_model_dir):
    items = [item(*t) for t in distinct_items(2)]
    service = ScoringService(app_store.factory, app_store.settings, max_queue=64)  # not following: no refresh
    try:
        app = reward_app(app_store, service, default_version=app_store.version_name)
        with TestClient(app, raise_server_exceptions=False) as client:
            health = client.get("/v1/health")
            assert health.status_code == 503 and health.json()["status"] == "not loaded"
            assert post(client, items).status_code == 503  # starts the load
            service.wait_for_version(app_store.version_name, LOAD_TIMEOUT_S)
            assert client.get("/v1/health").json() == {
                "status": "ready",
                "version": app_store.version_name,
                "detail": None,
            }
            first = post(client, items).json()
            assert first["version"] == app_store.version_name
            _, new_name = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
            service.refresh()  # even a service that follows in the background leaves the pinned answer alone
            again = post(client, items).json()
            assert again["version"] == app_store.version_name and again["scores"] == first["scores"]
            newer = post(client, items, version=new_name).json()  # a request may still name another version
            assert newer["version"] == new_name
            assert newer["scores"] == pytest.approx([s + SHIFT for s in first["scores"]], abs=TOLERANCE)
            assert client.get("/v1/version").json()["following"] is False
    finally:
        service.stop()


def test_an_unknown_version_is_404_and_a_broken_one_409_with_the_reason(app_store, service, shifted_model_dir):
    items = [item(*t) for t in distinct_items(1)]
    _, broken = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir, promote=False)
    (app_store.settings.registry_dir / broken / "reward_head.safetensors").write_bytes(b"not the weights")
    _, missing = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir, promote=False)
    shutil.rmtree(app_store.settings.registry_dir / missing)
    with TestClient(reward_app(app_store, service), raise_server_exceptions=False) as client:
        unknown = post(client, items, version="v9999")
        assert unknown.status_code == 404 and "No model version named 'v9999'" in unknown.json()["error"]["message"]
        for name, reason in ((broken, "does not match its sha256"), (missing, "is missing")):
            assert post(client, items, version=name).status_code == 503  # its load starts
            with pytest.raises(VersionUnavailable, match=reason):
                service.wait_for_version(name, LOAD_TIMEOUT_S)
            refused = post(client, items, version=name)
            assert refused.status_code == 409, refused.text
            error = refused.json()["error"]
            assert error["code"] == "version_unavailable" and reason in error["message"] and name in error["message"]
        served = post(client, items)
        assert served.status_code == 200 and served.json()["version"] == app_store.version_name  # no fallback above


def test_one_batch_with_two_versions_runs_one_forward_per_version(app_template, shifted_model_dir):
    forwards: list[tuple[str, int]] = []

    def load(path, name):
        model = load_scorer_model(path, settings=SCORER_SETTINGS, device="cpu")
        score = model.score_all  # what the inference thread calls: one forward

        def counted(batch):
            forwards.append((name, len(batch)))
            return score(batch)

        model.score_all = counted
        return Serving(version_id=1 if name == "old" else 2, name=name, model=model)

    old, new = load(app_template.version_dir, "old"), load(shifted_model_dir, "new")
    batcher = Batcher(lambda: new, max_batch=16, batch_wait_s=0.0)
    triples = distinct_items(3)
    futures = {name: [Future() for _ in triples] for name in ("old", "new", "following")}
    batcher.put_many(triples, futures["old"], old)  # all queued before the thread starts: one batch of 9
    batcher.put_many(triples, futures["new"], new)
    batcher.put_many(triples, futures["following"])
    batcher.start()
    results = {name: [f.result(timeout=LOAD_TIMEOUT_S) for f in fs] for name, fs in futures.items()}
    batcher.close()
    batcher.thread.join(LOAD_TIMEOUT_S)
    assert sorted(forwards) == [("new", 6), ("old", 3)], "one forward per version, the following items with new"
    old_scores = [value.score for value, _ in results["old"]]  # each future: (ModelScore, Serving)
    assert [s.name for _, s in results["old"]] == ["old"] * 3 and [s.name for _, s in results["new"]] == ["new"] * 3
    new_scores = [value.score for value, _ in results["new"]]
    assert new_scores == pytest.approx([s + SHIFT for s in old_scores], abs=TOLERANCE)
    following = [value.score for value, _ in results["following"]]
    assert following == pytest.approx(new_scores, abs=TOLERANCE)


# --- the pinned-version cache, with stand-in loads -------------------------------------------------------------


def test_pinned_versions_keep_the_most_recently_used_and_retry_a_failed_load_later():
    loads: list[str] = []

    def find(name: str) -> str:
        if name == "v9999":
            raise NotFound("No model version named 'v9999'")
        return name

    def load(target: str) -> Serving:
        loads.append(target)
        if target == "broken":
            raise ValueError("reward_head.safetensors does not match its sha256")
        return Serving(version_id=len(loads), name=target, model=object())

    pinned = PinnedVersions(find, load, capacity=2, retry_failed_s=3600)
    with pytest.raises(VersionLoading):
        pinned.get("a")  # starts the load, never waits for it
    assert pinned.wait("a", LOAD_TIMEOUT_S).name == "a"
    pinned.wait("b", LOAD_TIMEOUT_S)
    pinned.get("a")  # a is now the most recently used
    pinned.wait("c", LOAD_TIMEOUT_S)
    assert [s.name for s in pinned.loaded()] == ["a", "c"] and pinned.state("b")[0] == "not loaded"
    with pytest.raises(NotFound):
        pinned.get("v9999")
    with pytest.raises(VersionUnavailable, match="broken cannot be loaded: reward_head"):
        pinned.wait("broken", LOAD_TIMEOUT_S)
    with pytest.raises(VersionUnavailable):
        pinned.get("broken")  # not retried before retry_failed_s
    assert loads == ["a", "b", "c", "broken"]
    assert pinned.state("broken")[0] == "unavailable"
