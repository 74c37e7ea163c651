"""ScoringService swaps: an instant rollback to the previous model, a load before every other swap, and a failed load
kept as the service's `load_failure` (shown by the app's header and Research tab, see test_handlers_research)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.scoring import LoadFailure, ScorerStatus, ScoringService, ServedVersion
from app.scoring.versions import MAX_ERROR_CHARS
from storage.db import transaction
from tests.app.conftest import publish_model_dir
from tests.app.test_scoring import candidate_ids, counting_service, load_for_serving
from trainer.registry import promote_version, rollback


def roll_back(store) -> None:
    with transaction(store.factory) as session:
        rollback(session, settings=store.settings)


def break_folder(store, name: str) -> None:
    (store.settings.registry_dir / name / "reward_head.safetensors").write_bytes(b"not the weights")


def test_a_rollback_to_the_previous_model_swaps_without_a_load(app_store, shifted_model_dir):
    ids = candidate_ids(app_store.factory, 2)
    first = (app_store.version_id, app_store.version_name)
    service, loader = counting_service(app_store)
    try:
        before = service.score_candidates(ids)
        new_id, new_name = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
        assert service.refresh() is True and loader.loaded == [first[1], new_name]
        roll_back(app_store)
        assert service.refresh() is True
        assert service.version == first
        assert loader.loaded == [first[1], new_name], "the previous model was in memory: no load"
        after = service.score_candidates(ids)
        assert {item.version_id for item in after.values()} == {first[0]}
        assert {i: r.score for i, r in after.items()} == pytest.approx({i: r.score for i, r in before.items()})
        with transaction(app_store.factory) as session:  # promoting it again: the rolled-back model is the previous
            promote_version(session, version_id=new_id, reason="fixed the data", settings=app_store.settings)
        assert service.refresh() is True and service.version == (new_id, new_name)
        assert len(loader.loaded) == 2
    finally:
        service.stop()


def test_a_rollback_target_not_in_memory_is_loaded_before_the_swap(app_store, shifted_model_dir):
    first = app_store.version_name
    loading, release = threading.Event(), threading.Event()
    loads: list[str] = []

    def loader(path: Path, *, device: str):
        loads.append(path.name)
        if path.name == first and len(loads) > 1:  # the first version loaded again: hold it until released
            loading.set()
            assert release.wait(60), "the test never released the loader"
        return load_for_serving(path, device=device)

    service = ScoringService(app_store.factory, app_store.settings, loader=loader)
    try:
        assert service.refresh() is True
        for _ in range(2):  # v0002, then v0003 (v0002 kept as the previous model, v0001 dropped)
            publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
            assert service.refresh() is True
        roll_back(app_store)  # to v0002: in memory
        assert service.refresh() is True
        second = service.version
        roll_back(app_store)  # to v0001: on disk only
        swapped: list[bool] = []
        refresher = threading.Thread(target=lambda: swapped.append(service.refresh()))
        refresher.start()
        assert loading.wait(60), "the rollback target was never loaded"
        assert service.version == second, "the current model serves until the target is loaded"
        results = service.score_candidates(candidate_ids(app_store.factory, 1))
        assert {item.version_id for item in results.values()} == {second[0]}
        release.set()
        refresher.join(60)
        assert swapped == [True] and service.version == (app_store.version_id, first)
        assert loads == [first, "v0002", "v0003", first]
    finally:
        release.set()
        service.stop()


def test_a_failed_load_is_kept_until_the_active_version_serves(app_store, shifted_model_dir):
    service, _ = counting_service(app_store)
    try:
        new_id, new_name = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
        break_folder(app_store, new_name)
        assert service.refresh() is False
        failure = service.load_failure
        assert (failure.version_id, failure.name) == (new_id, new_name) and failure.failed_at.tzinfo is not None
        status = service.status()
        assert status.served.name == app_store.version_name
        problem = status.problem()
        assert problem.startswith(f"The active version {new_name} failed to load at ")
        assert problem.endswith(f"; still serving {app_store.version_name}.") and failure.short_error in problem
        assert failure.short_error not in status.problem(detail=False)
        assert service.refresh() is False and service.load_failure.failed_at == failure.failed_at  # not retried yet
        roll_back(app_store)  # the active version is the serving one again: nothing failed any more
        assert service.refresh() is False
        assert service.load_failure is None and service.status().problem() is None
    finally:
        service.stop()


def test_an_active_version_that_never_loaded_says_no_scorer_is_serving(app_store):
    break_folder(app_store, app_store.version_name)
    service = ScoringService(app_store.factory, app_store.settings)
    try:
        assert service.refresh() is False and service.version is None
        assert service.status().problem().endswith("; no scorer is serving.")
    finally:
        service.stop()


def test_the_scorer_status_message():
    at = datetime(2026, 1, 2, 18, 40, tzinfo=UTC)
    failure = LoadFailure(5, "v0005", "the LoRA base changed\nTraceback …", at)
    served = ServedVersion(4, "v0004", True)
    assert ScorerStatus(served, None).problem() is None
    assert ScorerStatus(served, failure).problem() == (
        "The active version v0005 failed to load at 18:40 UTC (the LoRA base changed); still serving v0004."
    )
    assert ScorerStatus(None, failure).problem(detail=False) == (
        "The active version v0005 failed to load at 18:40 UTC; no scorer is serving."
    )
    long = LoadFailure(5, "v0005", "x" * 1000, at)
    assert len(long.short_error) == MAX_ERROR_CHARS and long.short_error.endswith("…")
