"""`RewardClient` and the Flow-GRPO-style adapter: against a served reward server (uvicorn on a free port) for
scores, concurrency and replicas, and against `httpx.MockTransport` for retries and refusals."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from app.rewards import RewardClient, RewardError, reward_fn
from app.rewards.adapter import to_uint8_images
from app.scoring import ScoringService
from tests.app.reward_support import distinct_items, reward_app, reward_service, served
from tests.app.test_scoring import run_then_stop
from trainer.scorer import load_scorer_model

TOLERANCE = 1e-5
CLIENTS = 8


@pytest.fixture
def service(reward_scoring) -> ScoringService:
    return reward_scoring


@pytest.fixture
def server_url(app_store, service) -> Iterator[str]:
    with served(reward_app(app_store, service)) as url:
        yield url


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def expected_scores(service: ScoringService, triples) -> list[float]:
    return [outcome.score for outcome in service.score_items(triples)]


# --- against a served reward server --------------------------------------------------------------------------


def test_the_client_scores_in_order_in_chunks_and_routes_around_a_dead_replica(app_store, service, server_url):
    triples = distinct_items(5)
    sources, edited, instructions = (list(column) for column in zip(*triples, strict=True))
    expected = expected_scores(service, triples)
    with RewardClient(server_url) as client:
        reply = client.score_batch(sources, edited, instructions, ids=["a", "b", "c", "d", "e"])
        assert reply.scores == pytest.approx(expected, abs=TOLERANCE)
        assert (reply.version, reply.ids) == (app_store.version_name, ["a", "b", "c", "d", "e"])
        shared = client.score(sources[0], edited, "make it look like variant 0")  # one source, one instruction
        alone = [client.score(sources[0], [e], ["make it look like variant 0"])[0] for e in edited]
        assert shared == pytest.approx(alone, abs=TOLERANCE)
    with RewardClient([closed_port_url(), server_url], batch_size=2, backoff_s=0.0) as replicas:
        assert replicas.score(sources, edited, instructions) == pytest.approx(expected, abs=TOLERANCE)
        health = replicas.health()
        assert health[0]["status"] == "unreachable" and health[1]["status"] == "ready"


def test_concurrent_clients_get_their_own_results_from_shared_batches(app_store):
    batch_sizes: list[int] = []

    def counting_loader(path: Path, *, device: str):
        model = load_scorer_model(path, settings=app_store.settings, device=device)
        score = model.score_all  # what the inference thread calls: one forward

        def counted(batch):
            batch_sizes.append(len(batch))
            return score(batch)

        model.score_all = counted
        return model

    service = reward_service(app_store, loader=counting_loader, max_batch=32, batch_wait_ms=500)
    work = {n: distinct_items(3, offset=3 * n) for n in range(CLIENTS)}
    expected = {n: expected_scores(service, triples) for n, triples in work.items()}
    batch_sizes.clear()
    flat = sorted(score for scores in expected.values() for score in scores)
    gaps = [b - a for a, b in zip(flat, flat[1:], strict=False)]
    assert min(gaps) > 10 * TOLERANCE, "the items must be told apart by their scores"
    got: dict[int, list[float]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(CLIENTS)
    with served(reward_app(app_store, service)) as url:

        def run(n: int) -> None:  # each RL worker with its own client and connection
            try:
                sources, edited, instructions = (list(column) for column in zip(*work[n], strict=True))
                with RewardClient(url) as client:
                    barrier.wait(60)
                    got[n] = client.score(sources, edited, instructions, ids=[f"{n}-{i}" for i in range(3)])
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        run_then_stop([threading.Thread(target=run, args=(n,)) for n in range(CLIENTS)], service)
    assert not errors, errors
    for n in range(CLIENTS):
        assert got[n] == pytest.approx(expected[n], abs=TOLERANCE), f"client {n} got another client's scores"
    assert sum(batch_sizes) == 3 * CLIENTS and max(batch_sizes) > 3, f"requests were not merged: {batch_sizes}"


def test_reward_fn_takes_nchw_float_tensors_and_nhwc_uint8_arrays(service, server_url):
    triples = distinct_items(4)
    sources = np.stack([np.asarray(s) for s, _, _ in triples])  # (N, H, W, 3) uint8
    edited = np.stack([np.asarray(e) for _, e, _ in triples])
    prompts = [instruction for _, _, instruction in triples]
    expected = expected_scores(service, triples)
    with RewardClient(server_url) as client:
        from_arrays, info = reward_fn(edited, prompts, [{"source": s} for s in sources], client=client)
        tensors = torch.from_numpy(edited).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W) in [0, 1]
        source_tensors = torch.from_numpy(sources).permute(0, 3, 1, 2).float() / 255
        from_tensors, _ = reward_fn(tensors, prompts, [{"source": s} for s in source_tensors], client=client)
    assert from_arrays.dtype == np.float32 and from_arrays.tolist() == pytest.approx(expected, abs=TOLERANCE)
    assert from_tensors.tolist() == pytest.approx(expected, abs=TOLERANCE)
    assert info["version"] and info["model_sha256"]


def test_the_adapter_refuses_images_it_cannot_read():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_uint8_images(torch.full((1, 3, 8, 8), -1.0))
    with pytest.raises(ValueError, match="4 dimensions"):
        to_uint8_images(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"float \(C, H, W\)"):
        to_uint8_images(np.zeros((1, 8, 8, 3), dtype=np.float32))  # NHWC float: ambiguous, refused
    assert to_uint8_images(torch.ones((2, 1, 8, 8)))[0].shape == (8, 8, 3)


# --- retries and refusals, on a mock transport ---------------------------------------------------------------


def reply_for(body: dict, version: str = "v0001") -> dict:
    ids = [item["id"] for item in body["items"]]
    return {
        "schema_version": 1,
        "version": body.get("version", version),
        "version_id": 1,
        "model_sha256": "ab",
        "passed_floor": True,
        "scores": [float(i) for i in range(len(ids))],
        "results": [{"id": i, "score": float(n)} for n, i in enumerate(ids)],
    }


def error_reply(status: int, code: str, headers: dict | None = None) -> httpx.Response:
    body = {"schema_version": 1, "error": {"code": code, "message": f"the {code} message"}}
    return httpx.Response(status, json=body, headers=headers)


def mock_client(handler, urls=("http://one",), **kwargs) -> RewardClient:
    return RewardClient(list(urls), transport=httpx.MockTransport(handler), backoff_s=0.0, **kwargs)


def tiny_pictures(n: int) -> list[np.ndarray]:
    return [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(n)]


def test_429_and_503_are_retried_after_retry_after_then_scored():
    statuses = iter(
        [
            error_reply(429, "overloaded", {"Retry-After": "0"}),
            error_reply(503, "version_loading", {"Retry-After": "0"}),
        ]
    )
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return next(statuses, None) or httpx.Response(200, json=reply_for(json.loads(request.content)))

    with mock_client(handler) as client:
        assert client.score(tiny_pictures(1)[0], tiny_pictures(2), "x") == [0.0, 1.0]
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("response", "attempts", "message"),
    [
        (error_reply(500, "internal"), 3, "No reward after 3 attempts; last: http://one: HTTP 500 internal"),
        (error_reply(401, "unauthorized"), 1, "HTTP 401 unauthorized: the unauthorized message"),
        (error_reply(404, "unknown_version"), 1, "unknown_version"),
        (httpx.Response(502, text="<html>bad gateway</html>"), 3, "HTTP 502"),
    ],
)
def test_failures_raise_after_the_retries_and_refusals_at_once(response, attempts, message):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response

    with mock_client(handler, retries=2) as client, pytest.raises(RewardError, match=message):
        client.score(tiny_pictures(1)[0], tiny_pictures(2), "x")
    assert len(calls) == attempts


def test_a_failed_item_raises_with_its_id_and_reason_never_a_score():
    def handler(request: httpx.Request) -> httpx.Response:
        body = reply_for(json.loads(request.content))
        body["results"][1] = {"id": 1, "error": "edited: not valid base64"}
        body["scores"][1] = None
        return httpx.Response(422, json=body)

    with mock_client(handler) as client, pytest.raises(RewardError, match="item 1: edited: not valid base64"):
        client.score(tiny_pictures(1)[0], tiny_pictures(2), "x")


def test_timeouts_and_refused_connections_are_retried_on_the_next_replica():
    hosts = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "slow":
            raise httpx.ReadTimeout("timed out", request=request)
        if request.url.host == "down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=reply_for(json.loads(request.content)))

    with mock_client(handler, urls=("http://slow", "http://down", "http://up")) as client:
        assert client.score(tiny_pictures(1)[0], tiny_pictures(1), "x") == [0.0]
    assert hosts == ["slow", "down", "up"]
    with mock_client(handler, urls=("http://slow",), retries=1) as client, pytest.raises(RewardError, match="Timeout"):
        client.score(tiny_pictures(1)[0], tiny_pictures(1), "x")


def test_later_chunks_are_pinned_to_the_first_chunks_version_and_matched_by_id():
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        reply = reply_for(body, version="v0007")
        reply["results"].reverse()  # matched by id, not position
        reply["results"] = [{"id": r["id"], "score": float(r["id"])} for r in reply["results"]]
        return httpx.Response(200, json=reply)

    with mock_client(handler, batch_size=2) as client:
        reply = client.score_batch(tiny_pictures(1)[0], tiny_pictures(5), "x")
    assert reply.scores == [0.0, 1.0, 2.0, 3.0, 4.0] and reply.version == "v0007"
    assert "version" not in bodies[0] and all(b["version"] == "v0007" for b in bodies[1:])
    assert sorted(len(b["items"]) for b in bodies) == [1, 2, 2]


def test_a_reply_without_an_items_score_raises():
    def handler(request: httpx.Request) -> httpx.Response:
        body = reply_for(json.loads(request.content))
        body["results"][0]["id"] = "someone else's"
        return httpx.Response(200, json=body)

    with mock_client(handler) as client, pytest.raises(RewardError, match="no score for item"):
        client.score(tiny_pictures(1)[0], tiny_pictures(1), "x")
