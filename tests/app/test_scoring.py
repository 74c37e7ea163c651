"""ScoringService with the real tiny JRM: version stamps, caches, batching, hot swap, and failed loads."""

from __future__ import annotations

import dataclasses
import gc
import logging
import shutil
import threading
import time
import weakref
from pathlib import Path

import PIL.Image
import pytest
import torch
from sqlalchemy import delete, select

from app.scoring import NoScorerYet, ScoredItem, ScoringService, ServedVersion, floor_verdict
from storage.errors import InvalidInput, NotFound
from storage.images import open_image
from storage.models import Candidate, Score
from storage.settings import load_settings
from tests.app.conftest import SHIFT, publish_model_dir
from tests.app.handler_support import set_gate
from trainer.evaluate import score_images
from trainer.registry import cached_scores
from trainer.scorer import load_scorer_model

TOLERANCE = 1e-5
SCORER_SETTINGS = load_settings(environ={})  # float32 on CPU; the versions here are full ones, with no base to find


def load_for_serving(path: Path, *, device: str):
    """The service's own loader (`trainer.scorer.load_scorer_model`), as a test wraps it."""
    return load_scorer_model(path, settings=SCORER_SETTINGS, device=device)


class CountingLoader:
    """Loads like the app does and counts every load (`loaded`: the folders' names, in order) and every forward of
    the loaded models (and their batch sizes)."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.loaded: list[str] = []
        self._lock = threading.Lock()

    @property
    def forwards(self) -> int:
        return len(self.batch_sizes)

    def __call__(self, path: Path, *, device: str):
        self.loaded.append(path.name)
        model = load_for_serving(path, device=device)
        forward = model.forward

        def counted(batch, **kwargs):
            with self._lock:
                self.batch_sizes.append(len(batch))
            return forward(batch, **kwargs)

        model.forward = counted
        return model


@pytest.fixture
def idle_service():
    """A service that never touches its (absent) store: input validation comes before any lookup."""
    service = ScoringService(None, load_settings(environ={}))  # type: ignore[arg-type]
    yield service
    service.stop()


@pytest.fixture(scope="module")
def reference_model(app_template):
    """The active version loaded separately: the unbatched reference scores come from it."""
    return load_for_serving(app_template.version_dir, device="cpu")


def candidate_ids(factory, n: int | None = None) -> list[int]:
    with factory() as session:
        ids = list(session.scalars(select(Candidate.id).order_by(Candidate.id)))
    return ids[:n]


def unbatched_scores(model, factory, settings, ids: list[int]) -> dict[int, float]:
    """Each candidate scored alone through trainer.evaluate (batch of one)."""
    scores = {}
    with factory() as session:
        for candidate_id in ids:
            candidate = session.get(Candidate, candidate_id)
            source = open_image(settings, candidate.task.source_image)
            edited = open_image(settings, candidate.image)
            instruction = candidate.task.instruction
            (scores[candidate_id],) = score_images(model, source=source, instruction=instruction, edited=[edited])
    return scores


def counting_service(app_store, **kwargs) -> tuple[ScoringService, CountingLoader]:
    loader = CountingLoader()
    service = ScoringService(app_store.factory, app_store.settings, loader=loader, **kwargs)
    assert service.refresh()
    return service, loader


def run_then_stop(threads: list[threading.Thread], service) -> None:
    """Start the threads, wait for them (2 min at most each), then stop the service whatever happened."""
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        service.stop()


# --- no scorer -------------------------------------------------------------------------------------------------


def test_no_active_version_raises_no_scorer_yet(factory, settings):
    service = ScoringService(factory, settings)
    try:
        assert service.refresh() is False
        assert service.version is None
        with pytest.raises(NoScorerYet, match="No scorer yet"):
            service.score_candidates([1])
        picture = PIL.Image.new("RGB", (32, 32))
        with pytest.raises(NoScorerYet):
            service.score_upload(source=picture, instruction="make it red", edited=[picture])
    finally:
        service.stop()


def test_the_service_sets_torch_threads_from_the_settings(factory, settings):
    service = ScoringService(factory, dataclasses.replace(settings, torch_threads=2))
    try:
        assert torch.get_num_threads() == 2  # process-wide: the app's inference thread runs with it
    finally:
        service.stop()
        torch.set_num_threads(1)  # what the test suite runs with


# --- stamps, reference values, caches --------------------------------------------------------------------------


def test_scores_are_stamped_with_the_version_and_equal_the_unbatched_forward(
    app_store, scoring_service, reference_model
):
    ids = candidate_ids(app_store.factory, 5)
    results = scoring_service.score_candidates(ids)
    assert scoring_service.version == (app_store.version_id, app_store.version_name)
    assert list(results) == ids
    expected = unbatched_scores(reference_model, app_store.factory, app_store.settings, ids)
    for candidate_id, item in results.items():
        assert item.candidate_id == candidate_id
        assert (item.version_id, item.version_name) == (app_store.version_id, app_store.version_name)
        assert item.score == pytest.approx(expected[candidate_id], abs=TOLERANCE)
    with app_store.factory() as session:
        stored = cached_scores(session, version_id=app_store.version_id, candidate_ids=ids)
    assert stored == pytest.approx({i: item.score for i, item in results.items()})


def test_cache_hits_run_no_forward_in_memory_or_from_the_scores_table(app_store):
    with app_store.factory() as session:  # the store's training run scored candidates after its publish: start empty
        session.execute(delete(Score))
        session.commit()
    ids = candidate_ids(app_store.factory, 4)
    service, loader = counting_service(app_store)
    try:
        first = service.score_candidates(ids)
        computed = loader.forwards
        assert computed >= 1 and sum(loader.batch_sizes) == len(ids)
        assert service.score_candidates(ids) == first
        assert service.score_candidates(list(reversed(ids)) + ids[:1]) == {i: first[i] for i in reversed(ids)}
        assert loader.forwards == computed, "memory cache hit ran the model"
    finally:
        service.stop()
    restarted, loader2 = counting_service(app_store)  # empty memory: the hits come from the scores table
    try:
        again = restarted.score_candidates(ids)
        assert loader2.forwards == 0
        assert {i: r.score for i, r in again.items()} == pytest.approx({i: r.score for i, r in first.items()})
        restarted.score_candidates(ids + candidate_ids(app_store.factory)[4:5])
        assert loader2.batch_sizes == [1], "only the one new candidate is computed"
    finally:
        restarted.stop()


def test_upload_scores_are_stamped_uncached_and_match_the_forward(app_store, scoring_service, reference_model):
    source = PIL.Image.new("RGB", (40, 32), (200, 30, 30))
    edited = [PIL.Image.new("RGB", (40, 32), (30, 30, level)) for level in (0, 120, 250)]
    results = scoring_service.score_upload(source=source, instruction="  make it blue ", edited=edited)
    expected = score_images(reference_model, source=source, instruction="make it blue", edited=edited, batch_size=1)
    assert [r.candidate_id for r in results] == [None, None, None]
    assert {(r.version_id, r.version_name) for r in results} == {(app_store.version_id, app_store.version_name)}
    assert [r.score for r in results] == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instruction": " \x00 "}, "instruction is empty"),
        ({"instruction": "x" * 2001}, "shorten it"),
        ({"edited": []}, "at least one edited image"),
        ({"edited": "not a list"}, "at least one edited image"),
        ({"source": b"\x89PNG"}, "source image is missing or not a picture"),
        ({"edited": [PIL.Image.new("RGB", (4, 40))]}, "edited image 1 is 4x40"),
    ],
)
def test_bad_uploads_say_what_to_change(idle_service, kwargs, message):
    picture = PIL.Image.new("RGB", (32, 32))
    arguments = {"source": picture, "instruction": "make it red", "edited": [picture], **kwargs}
    with pytest.raises(InvalidInput, match=message):
        idle_service.score_upload(**arguments)


def test_bad_candidate_ids(idle_service):
    assert idle_service.score_candidates([]) == {}
    with pytest.raises(InvalidInput, match="must be integers"):
        idle_service.score_candidates([1, "2"])
    with pytest.raises(InvalidInput, match="must be a list"):
        idle_service.score_candidates(3)


def test_unknown_candidates_are_not_found_and_the_known_ones_still_cached(app_store, scoring_service):
    with pytest.raises(NotFound, match=r"candidate\(s\) \[999998, 999999\] do not exist"):
        scoring_service.score_candidates([1, 999999, 999998])
    with app_store.factory() as session:
        assert list(cached_scores(session, version_id=app_store.version_id, candidate_ids=[1])) == [1]


# --- the floor verdict -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "verdict"),
    [
        ({"gate": {"passed_floor": True, "reason": "beats the floor"}}, True),
        ({"gate": {"passed_floor": False, "reason": "does not beat the floor"}}, False),
        ({"heldout_accuracy": 0.9}, None),  # gated before the floor existed
        (None, None),
        ({"gate": {"passed_floor": 1}}, None),  # anything but a bool is no verdict
        ({"gate": "passed"}, None),
    ],
)
def test_the_floor_verdict_is_the_gates_bool_or_none(metrics, verdict):
    assert floor_verdict(metrics) is verdict


def test_the_verdict_is_read_on_load_and_on_each_poll_and_stamped_on_every_score(app_store):
    set_gate(app_store.factory, app_store.version_id, passed_floor=False)
    service, _ = counting_service(app_store)
    try:
        assert service.served == ServedVersion(app_store.version_id, app_store.version_name, False)
        ids = candidate_ids(app_store.factory, 2)
        assert {item.passed_floor for item in service.score_candidates(ids).values()} == {False}
        set_gate(app_store.factory, app_store.version_id, passed_floor=True)
        assert service.served.passed_floor is False, "answered from memory until the next poll"
        assert service.refresh() is False and service.served.passed_floor is True  # no reload for a new verdict
        assert {item.passed_floor for item in service.score_candidates(ids).values()} == {True}  # cached ones too
        picture = PIL.Image.new("RGB", (32, 32))
        (upload,) = service.score_upload(source=picture, instruction="make it red", edited=[picture])
        assert upload.passed_floor is True
    finally:
        service.stop()


# --- swaps -----------------------------------------------------------------------------------------------------


def test_a_promoted_version_is_swapped_in_and_old_cached_scores_are_not_reused(app_store, shifted_model_dir):
    ids = candidate_ids(app_store.factory, 4)
    service, loader = counting_service(app_store)
    try:
        old = service.score_candidates(ids)
        new_id, new_name = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
        assert service.version == (app_store.version_id, app_store.version_name), "no swap before refresh()"
        assert service.refresh() is True
        assert service.version == (new_id, new_name)
        assert service.refresh() is False
        before = loader.forwards
        new = service.score_candidates(ids)
        assert loader.forwards > before, "the new version must compute, not reuse the old version's cache"
        for i in ids:
            assert (new[i].version_id, new[i].version_name) == (new_id, new_name)
            assert new[i].score == pytest.approx(old[i].score + SHIFT, abs=TOLERANCE)
        with app_store.factory() as session:
            kept = cached_scores(session, version_id=app_store.version_id, candidate_ids=ids)
        assert kept == pytest.approx({i: old[i].score for i in ids}), "the old version's scores stay stored"
    finally:
        service.stop()


def test_after_swap_runs_after_every_swap_and_drop_when_the_service_no_longer_holds_the_dropped_model(
    app_store, shifted_model_dir
):
    loaded, seen = [], []  # weak references to every model loaded; per hook call, which are still alive

    def loader(path: Path, *, device: str):
        model = load_for_serving(path, device=device)
        loaded.append(weakref.ref(model))
        return model

    def after_swap() -> None:  # the app passes app.heap.settle, which collects like this first
        gc.collect()
        seen.append([ref() is not None for ref in loaded])

    service = ScoringService(app_store.factory, app_store.settings, loader=loader, after_swap=after_swap)
    try:
        assert service.refresh() is True
        publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
        assert service.refresh() is True  # the first model is kept as the previous one (an instant rollback)
        publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
        assert service.refresh() is True  # the first model is dropped before the third loads: two models at most
        assert service.refresh() is False
    finally:
        service.stop()
    # Per hook call: the 1st swap; the 2nd (the 1st model kept); the drop before the 3rd load; the 3rd swap.
    assert seen == [[True], [True, True], [False, True], [False, True, True]], "a dropped model must be unreachable"


def test_the_poller_loads_in_the_background_while_the_old_model_keeps_serving(app_store, shifted_model_dir):
    release = threading.Event()

    def slow_loader(path: Path, *, device: str):
        if path.name != app_store.version_name:
            assert release.wait(60), "the test never released the loader"
        return load_for_serving(path, device=device)

    service = ScoringService(app_store.factory, app_store.settings, loader=slow_loader, poll_interval_s=0.05)
    try:
        service.start()
        _wait_for(lambda: service.version is not None)
        new_id, _ = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
        time.sleep(0.3)  # the poller is now blocked inside the new version's load
        started = time.monotonic()
        item = service.score_candidates(candidate_ids(app_store.factory, 1))
        assert next(iter(item.values())).version_id == app_store.version_id
        assert time.monotonic() - started < 30
        release.set()
        _wait_for(lambda: service.version is not None and service.version[0] == new_id)
    finally:
        release.set()
        service.stop()


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_broken_version_folder_keeps_the_previous_model_serving(app_store, shifted_model_dir, caplog, damage):
    ids = candidate_ids(app_store.factory, 2)
    service, _ = counting_service(app_store)
    try:
        new_id, new_name = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir)
        folder = app_store.settings.registry_dir / new_name
        if damage == "missing":
            shutil.rmtree(folder)
        else:
            (folder / "reward_head.safetensors").write_bytes(b"not the weights")
        with caplog.at_level(logging.ERROR, logger="app.scoring"):
            assert service.refresh() is False
            assert service.refresh() is False  # not retried at once, and logged once
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert new_name in errors[0].getMessage() and "still serving v0001" in errors[0].getMessage()
        assert service.version == (app_store.version_id, app_store.version_name)
        assert new_name in service.last_error
        results = service.score_candidates(ids)
        assert {r.version_id for r in results.values()} == {app_store.version_id}
    finally:
        service.stop()


# --- batching --------------------------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_equal_the_unbatched_scores(app_store, reference_model):
    ids = candidate_ids(app_store.factory, 8)
    assert len(ids) == 8, "the demo store needs at least 8 candidates"
    service, loader = counting_service(app_store, batch_wait_ms=200)
    results: dict[int, ScoredItem] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(ids))

    def request(candidate_id: int) -> None:
        try:
            barrier.wait()
            results.update(service.score_candidates([candidate_id]))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in ids]
    run_then_stop(threads, service)
    assert not errors
    assert loader.forwards < len(ids), f"8 requests ran {loader.forwards} forwards {loader.batch_sizes}"
    assert max(loader.batch_sizes) > 1
    expected = unbatched_scores(reference_model, app_store.factory, app_store.settings, ids)
    for candidate_id in ids:
        assert results[candidate_id].score == pytest.approx(expected[candidate_id], abs=TOLERANCE)
        assert results[candidate_id].version_id == app_store.version_id


def test_the_same_candidate_requested_at_once_is_computed_once(app_store):
    service, loader = counting_service(app_store, batch_wait_ms=200)
    candidate = candidate_ids(app_store.factory, 1)
    barrier = threading.Barrier(4)
    results = []

    def request() -> None:
        barrier.wait()
        results.append(service.score_candidates(candidate))

    threads = [threading.Thread(target=request) for _ in range(4)]
    run_then_stop(threads, service)
    assert len(results) == 4 and all(r == results[0] for r in results)
    assert sum(loader.batch_sizes) < 4


def test_a_stopped_service_refuses_requests(scoring_service):
    scoring_service.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        scoring_service.score_candidates([1])


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the scoring service"
        time.sleep(0.02)
