"""The reward server in-process (FastAPI's TestClient): bad input first, then scores, stamps, tokens and health.

Every bad request must get a 4xx with a message that says what is wrong, and the server must keep answering.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.rewards.__main__ import main
from app.rewards.security import bearer_matches, exposure_error
from app.rewards.server import create_app
from app.scoring import ScoringService
from storage.images import open_image
from storage.models import Candidate
from storage.settings import load_settings
from tests.app.reward_support import (
    b64,
    distinct_items,
    item,
    picture,
    png,
    reward_app,
    wait_until,
)
from trainer.registry import files_sha256
from trainer.scorer import load_scorer_model

TOLERANCE = 1e-5
TOKEN = "a-test-token-that-is-long-enough"


@pytest.fixture
def service(reward_scoring) -> ScoringService:
    return reward_scoring


@pytest.fixture
def client(app_store, service) -> Iterator[TestClient]:
    with TestClient(reward_app(app_store, service), raise_server_exceptions=False) as client:
        yield client


def good_item(item_id=None) -> dict:
    source, edited, instruction = distinct_items(1)[0]
    return item(source, edited, instruction, item_id)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (a decompression bomb's shape): refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def assert_still_up(client: TestClient) -> None:
    assert client.get("/v1/health").status_code == 200
    reply = client.post("/v1/score", json={"items": [good_item()]})
    assert reply.status_code == 200, reply.text


# --- bad input -------------------------------------------------------------------------------------------------


def bad_item_bodies() -> list[tuple[str, dict, str]]:
    """(case, request body, what the item's error must say): each refused item by item, with 422."""
    source, edited, instruction = distinct_items(1)[0]
    good = item(source, edited, instruction)
    whole_png = png(edited)
    return [
        ("corrupt base64", {**good, "edited": "not base64 at all!"}, "not valid base64"),
        ("truncated PNG", {**good, "edited": b64(whole_png[: len(whole_png) // 2])}, "truncated"),
        ("not an image", {**good, "source": b64(b"hello, this is text")}, "not an image"),
        ("GIF", {**good, "edited": b64(b"GIF89a" + bytes(64))}, "GIF files are not supported"),
        ("decompression bomb", {**good, "edited": b64(png_header_only(100_000, 100_000))}, "megapixel limit"),
        ("too small", {**good, "edited": b64(png(picture((1, 2, 3), size=(4, 40))))}, "at least 8 pixels"),
        ("empty instruction", {**good, "instruction": "  \x00 "}, "instruction is empty"),
        ("huge instruction", {**good, "instruction": "x" * 5000}, "shorten it"),
        ("unknown stored image", {**good, "source": {"sha256": "0" * 64}}, "no stored image has sha256"),
        ("data URL not base64", {**good, "source": "data:image/png,abc"}, "must be base64-encoded"),
    ]


def test_each_bad_item_gets_its_own_error_a_422_and_the_server_stays_up(client):
    for case, bad, message in bad_item_bodies():
        reply = client.post("/v1/score", json={"items": [good_item("ok"), {**bad, "id": "bad"}]})
        assert reply.status_code == 422, (case, reply.text)
        body = reply.json()
        assert body["results"][0]["id"] == "ok" and isinstance(body["results"][0]["score"], float), case
        assert body["results"][1] == {"id": "bad", "error": body["results"][1]["error"]}, case
        assert message in body["results"][1]["error"], (case, body["results"][1]["error"])
        assert body["scores"][1] is None and body["version"] is not None, case
        assert "Traceback" not in reply.text
        assert_still_up(client)


def test_each_bad_request_gets_a_4xx_that_says_what_to_change_and_the_server_stays_up(app_store, service):
    # One good item holds 2 distinct 40x32 pictures (2,560 px); a third distinct one goes over 3,000 px.
    tight = {"reward_max_body_mb": 0.02, "reward_max_items": 3, "reward_max_request_megapixels": 0.003}
    big_noise = b64(bytes(range(256)) * 120)  # ~40 KB of base64: over the 0.02 MB body limit
    cases = [
        ("not JSON", b"this is not json", 422, "invalid_request", "does not follow the schema"),
        (
            "missing instruction",
            {"items": [{"source": "a", "edited": "b"}]},
            422,
            "invalid_request",
            "items[0].instruction: Field required",
        ),
        ("missing items", {"version": "v0001"}, 422, "invalid_request", "items: Field required"),
        ("items not a list", {"items": "x"}, 422, "invalid_request", "items: Input should be a valid array"),
        ("unknown field", {"items": [good_item()], "extra": 1}, 422, "invalid_request", "extra: Extra inputs"),
        ("future schema", {"items": [good_item()], "schema_version": 2}, 422, "invalid_request", "schema_version"),
        (
            "bad sha256",
            {"items": [{**good_item(), "source": {"sha256": "xyz"}}]},
            422,
            "invalid_request",
            "items[0].source",
        ),
        ("no items", {"items": []}, 422, "invalid_request", "items is empty"),
        ("some ids", {"items": [good_item(1), good_item()]}, 422, "invalid_request", "every item an id, or none"),
        ("duplicate ids", {"items": [good_item(1), good_item(1)]}, 422, "invalid_request", "must be unique"),
        ("too many items", {"items": [good_item() for _ in range(4)]}, 413, "too_many_items", "at most 3"),
        ("oversized body", {"items": [{**good_item(), "edited": big_noise}]}, 413, "body_too_large", "0.02 MB"),
        (
            "too many pixels",
            {"items": [good_item(), {**good_item(), "source": b64(png(picture((9, 9, 9))))}]},
            413,
            "too_many_pixels",
            "megapixels",
        ),
        ("unknown version", {"items": [good_item()], "version": "v9999"}, 404, "unknown_version", "v9999"),
    ]
    with TestClient(reward_app(app_store, service, **tight), raise_server_exceptions=False) as client:
        for case, body, status, code, message in cases:
            if isinstance(body, bytes):
                reply = client.post("/v1/score", content=body, headers={"Content-Type": "application/json"})
            else:
                reply = client.post("/v1/score", json=body)
            assert reply.status_code == status, (case, reply.text)
            error = reply.json()["error"]
            assert error["code"] == code and message in error["message"], (case, error)
            assert "Traceback" not in reply.text and big_noise[:100] not in reply.text, case
            assert client.get("/v1/health").status_code == 200, case
        streamed = client.post("/v1/score", content=iter([b'{"items": [', b" " * 30_000, b"]}"]))  # no length
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "body_too_large"
        assert client.post("/v1/score", json={"items": [good_item()]}).status_code == 200


def test_an_internal_failure_is_a_500_without_details(app_store):
    def broken_loader(path, *, device):
        model = load_scorer_model(path, settings=app_store.settings, device=device)

        def score_all(batch):
            raise RuntimeError("secret detail /srv/models/v0001 line 42")

        model.score_all = score_all  # what the inference thread calls (one forward: μ, σ, dimension scores)
        return model

    service = ScoringService(app_store.factory, app_store.settings, loader=broken_loader)
    try:
        assert service.refresh()
        with TestClient(reward_app(app_store, service), raise_server_exceptions=False) as client:
            reply = client.post("/v1/score", json={"items": [good_item()]})
            assert reply.status_code == 500 and reply.json()["error"]["code"] == "internal"
            assert "secret" not in reply.text and "Traceback" not in reply.text
            assert client.get("/v1/health").status_code == 200
    finally:
        service.stop()


# --- scores and stamps -----------------------------------------------------------------------------------------


def test_scores_come_in_request_order_stamped_and_equal_the_in_process_scorer(app_store, client, service):
    triples = distinct_items(5)
    ids = ["e", 3, "a", 0, "z"]
    reply = client.post("/v1/score", json={"items": [item(*t, i) for t, i in zip(triples, ids, strict=True)]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    expected = [outcome.score for outcome in service.score_items(triples)]
    assert body["scores"] == pytest.approx(expected, abs=TOLERANCE)
    assert [r["id"] for r in body["results"]] == ids
    assert [r["score"] for r in body["results"]] == body["scores"]
    assert (body["version"], body["version_id"]) == (app_store.version_name, app_store.version_id)
    assert body["model_sha256"] == files_sha256(app_store.settings.registry_dir / app_store.version_name)
    assert body["schema_version"] == 1
    unnamed = client.post("/v1/score", json={"items": [item(*t) for t in triples[:2]]}).json()
    assert [r["id"] for r in unnamed["results"]] == [0, 1]


def test_stored_images_are_scored_by_sha256_as_their_candidate(app_store, client, service):
    with app_store.factory() as session:
        candidate = session.scalars(select(Candidate).order_by(Candidate.id)).first()
        source, edited = candidate.task.source_image, candidate.image
        request = {
            "source": {"sha256": source.sha256},
            "edited": {"sha256": edited.sha256},
            "instruction": candidate.task.instruction,
        }
        mixed = {**request, "source": b64(png(open_image(app_store.settings, source)))}
        candidate_id = candidate.id
    reply = client.post("/v1/score", json={"items": [request, mixed]})
    assert reply.status_code == 200, reply.text
    expected = service.score_candidates([candidate_id])[candidate_id].score
    assert reply.json()["scores"] == pytest.approx([expected, expected], abs=TOLERANCE)


# --- tokens and binding ----------------------------------------------------------------------------------------


def test_a_token_is_required_and_compared_exactly(app_store, service):
    with TestClient(reward_app(app_store, service, reward_token=TOKEN), raise_server_exceptions=False) as client:
        body = {"items": [good_item()]}
        wrong = ["", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN, f"Bearer {TOKEN[:-1]}"]
        for authorization in wrong:
            headers = {"Authorization": authorization} if authorization else {}
            score = client.post("/v1/score", json=body, headers=headers)
            version = client.get("/v1/version", headers=headers)
            for reply in (score, version):
                assert reply.status_code == 401, (authorization, reply.text)
                assert reply.headers["WWW-Authenticate"] == "Bearer"
                assert reply.json()["error"]["code"] == "unauthorized"
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/v1/score", json=body, headers=good).status_code == 200
        assert client.get("/v1/version", headers=good).status_code == 200
        assert client.get("/v1/health").status_code == 200  # health is open: load balancers probe it


def test_bearer_check():
    assert bearer_matches(f"Bearer {TOKEN}", TOKEN) and bearer_matches(f"bearer  {TOKEN} ", TOKEN)
    assert not bearer_matches(None, TOKEN) and not bearer_matches("Bearer", TOKEN)


@pytest.mark.parametrize(
    ("host", "token", "refused"),
    [
        ("127.0.0.1", "", False),
        ("localhost", "", False),
        ("::1", "", False),
        ("0.0.0.0", "", True),
        ("10.1.2.3", "", True),
        ("rewards.example.org", "", True),
        ("0.0.0.0", TOKEN, False),
    ],
)
def test_a_reachable_bind_needs_a_token(host, token, refused):
    assert (exposure_error(host, token) is not None) is refused


def test_the_command_refuses_a_public_bind_without_a_token_and_a_short_token(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("JRM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("JRM_REWARD_TOKEN", raising=False)
    assert main(["--host", "0.0.0.0"]) == 2
    assert "without a token" in capsys.readouterr().err
    monkeypatch.setenv("JRM_REWARD_TOKEN", "short")
    assert main(["--host", "0.0.0.0"]) == 2
    assert "JRM_REWARD_TOKEN is shorter than 16" in capsys.readouterr().err
    monkeypatch.setenv("JRM_REWARD_TOKEN", TOKEN)
    assert main(["--host", "0.0.0.0", "--device", "cuda:7"]) == 2  # past the token check, refused for the device
    assert "--device cuda:7" in capsys.readouterr().err


def test_the_token_is_not_shown_in_the_settings():
    assert TOKEN not in repr(load_settings(environ={"JRM_REWARD_TOKEN": TOKEN}))


# --- health and no scorer --------------------------------------------------------------------------------------


def test_health_is_503_until_a_scorer_is_loaded_and_scoring_says_why(factory, settings):
    service = ScoringService(factory, settings, max_queue=16)
    try:
        app = create_app(service, settings=settings, factory=factory)
        with TestClient(app, raise_server_exceptions=False) as client:
            health = client.get("/v1/health")
            assert health.status_code == 503 and health.headers["Retry-After"] == "5"
            assert health.json()["status"] == "not loaded" and "No model version" in health.json()["detail"]
            reply = client.post("/v1/score", json={"items": [good_item()]})
            assert reply.status_code == 503 and reply.json()["error"]["code"] == "no_scorer"
            assert reply.headers["Retry-After"] == "5"
            assert client.get("/v1/version").json()["serving"] is None
    finally:
        service.stop()


# --- the bounded queue -----------------------------------------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after_and_the_queued_requests_finish(app_store):
    release, entered = threading.Event(), threading.Event()

    def blocking_loader(path, *, device):
        model = load_scorer_model(path, settings=app_store.settings, device=device)
        score = model.score_all  # what the inference thread calls: one forward

        def held(batch):
            entered.set()
            assert release.wait(60), "the test never released the model"
            return score(batch)

        model.score_all = held
        return model

    service = ScoringService(
        app_store.factory, app_store.settings, loader=blocking_loader, max_batch=1, batch_wait_ms=0, max_queue=2
    )
    replies: list[int] = []
    try:
        assert service.refresh()
        with TestClient(reward_app(app_store, service), raise_server_exceptions=False) as client:

            def post(count: int) -> None:
                replies.append(
                    client.post("/v1/score", json={"items": [good_item() for _ in range(count)]}).status_code
                )

            first = threading.Thread(target=post, args=(1,))
            first.start()
            assert entered.wait(60), "the first request never reached the model"
            second = threading.Thread(target=post, args=(2,))  # fills the queue (2 items waiting)
            second.start()
            wait_until(lambda: service.queued_items == 2, "the second request's items to queue")
            refused = client.post("/v1/score", json={"items": [good_item()]})
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "overloaded"
            release.set()
            first.join(60)
            second.join(60)
            assert replies == [200, 200]
            assert client.post("/v1/score", json={"items": [good_item()]}).status_code == 200
    finally:
        release.set()
        service.stop()


# --- the command -----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("app_store", ["sqlite"], indirect=True)
def test_the_command_serves_the_promoted_version_and_stops_on_sigterm(app_store):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "JRM_DATA_DIR": str(app_store.settings.data_dir),
        "JRM_DATABASE_URL": app_store.settings.database_url,
        "JRM_TORCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "app.rewards", "--port", str(port), "--device", "cpu"]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, f"the server exited: {process.stdout.read()}"
            try:
                return httpx.get(f"{url}/v1/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "the reward server to load the promoted version", timeout_s=300)
        reply = httpx.post(f"{url}/v1/score", json={"items": [good_item()]}, timeout=60)
        assert reply.status_code == 200 and reply.json()["version"] == app_store.version_name
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
