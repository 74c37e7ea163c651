"""The reward server's HTTP layer: FastAPI routes, the token check, the body limit, and every error as JSON.

`create_app` takes a `ScoringService` (the one inference thread, following the promoted version or pinned), so tests
build the app in-process around a service of their own. `POST /v1/score` reads its body in the event loop (counting
bytes against `JRM_REWARD_MAX_BODY_MB`), then parses, decodes and waits for its scores in a worker thread; health and
version answer from memory in the event loop, so they stay quick under load. Replies never carry a stack trace: an
unexpected failure is logged here and answered with a generic 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.rewards.payloads import RequestRejected, build_reply, decode_items, parse_request
from app.rewards.schema import SCHEMA_VERSION, HealthReply, VersionInfo, VersionReply
from app.rewards.security import bearer_matches
from app.scoring import NoScorerYet, Overloaded, ScoredItem, ScoringService, VersionLoading, VersionUnavailable
from app.scoring.inputs import stored_pictures
from app.scoring.versions import Serving
from storage.errors import InvalidInput, NotFound
from storage.settings import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_S = {"overloaded": 1, "version_loading": 2, "no_scorer": 5, "not_ready": 5}


class TokenRejected(Exception):
    """The request has no bearer token, or the wrong one."""


def create_app(
    service: ScoringService,
    *,
    settings: Settings,
    factory: sessionmaker[Session],
    default_version: str | None = None,
) -> FastAPI:
    """The reward server around `service`: answers with `default_version` (pinned) or, when None, the promoted
    version the service follows. `settings.reward_token`, when set, is required on every route but health."""
    app = FastAPI(title="JRM reward server", version=str(SCHEMA_VERSION), docs_url=None, redoc_url=None)
    app.openapi_url = None  # the schema is documented in docs/reward-server.md; no generated pages to expose
    _add_error_handlers(app)

    async def require_token(authorization: str | None = Header(default=None)) -> None:  # async: no thread hop
        if settings.reward_token and not bearer_matches(authorization, settings.reward_token):
            raise TokenRejected

    def score_body(body: bytes) -> tuple[dict[str, Any], int]:
        request = parse_request(body, settings)
        version = request.version or default_version
        serving = service.serving_for(version)  # an unknown, loading or broken version refuses before any decoding
        service.check_room(len(request.items))
        decoded = decode_items(request, settings, lambda shas: stored_pictures(factory, settings, shas))
        valid = [item for item in decoded if not isinstance(item, InvalidInput)]
        scored = iter(service.score_items(valid, version=version))
        outcomes: Sequence[ScoredItem | InvalidInput] = [
            item if isinstance(item, InvalidInput) else next(scored) for item in decoded
        ]
        return build_reply(request, outcomes, serving)

    @app.post("/v1/score", dependencies=[Depends(require_token)])
    async def score(request: Request) -> JSONResponse:
        body = await _read_body(request, settings.reward_max_body_bytes, settings.reward_max_body_mb)
        reply, status = await run_in_threadpool(score_body, body)
        return JSONResponse(reply, status_code=status)

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        state, serving, detail = service.version_state(default_version)
        if serving is not None:
            return JSONResponse(HealthReply(status="ready", version=serving.name).model_dump())
        if detail is None and default_version is None:
            detail = "No model version is promoted yet; the server answers once one is."
        reply = HealthReply(status=state, version=default_version, detail=detail)
        return JSONResponse(reply.model_dump(), status_code=503, headers=_retry_after("not_ready"))

    @app.get("/v1/version", dependencies=[Depends(require_token)])
    async def version() -> JSONResponse:
        _, serving, _ = service.version_state(default_version)
        reply = VersionReply(
            following=default_version is None,
            default_version=default_version,
            serving=None if serving is None else _info(serving),
            pinned=[_info(s) for s in service.pinned_models()],
            device=service.device,
            queued_items=service.queued_items,
            limits=_limits(settings),
        )
        return JSONResponse(reply.model_dump())

    return app


async def _read_body(request: Request, limit: int, limit_mb: float) -> bytes:
    """The body, refused with 413 as soon as it is (or says it will be) over `limit` bytes."""
    too_large = RequestRejected(
        413,
        "body_too_large",
        f"The request body is over {limit_mb:g} MB (JRM_REWARD_MAX_BODY_MB); send fewer items per request.",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _info(serving: Serving) -> VersionInfo:
    return VersionInfo(
        version=serving.name,
        version_id=serving.version_id,
        model_sha256=serving.model_sha256,
        passed_floor=serving.passed_floor,
    )


def _limits(settings: Settings) -> dict[str, int | float]:
    return {
        "max_items": settings.reward_max_items,
        "max_body_bytes": settings.reward_max_body_bytes,
        "max_request_megapixels": settings.reward_max_request_megapixels,
        "max_image_bytes": settings.max_upload_bytes,
        "max_image_pixels": settings.max_pixels,
        "max_instruction_chars": settings.instruction_max_chars,
    }


def _retry_after(code: str) -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S[code])}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"schema_version": SCHEMA_VERSION, "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Each refusal as an `ErrorReply`: its status, a stable code, the message, and Retry-After where it helps."""

    @app.exception_handler(RequestRejected)
    async def rejected(request: Request, exc: RequestRejected) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(TokenRejected)
    async def unauthorized(request: Request, exc: TokenRejected) -> JSONResponse:
        message = "Missing or wrong token: send 'Authorization: Bearer <JRM_REWARD_TOKEN>'."
        return _error(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(NotFound)
    async def unknown_version(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, "unknown_version", str(exc))

    @app.exception_handler(InvalidInput)
    async def invalid(request: Request, exc: InvalidInput) -> JSONResponse:
        return _error(422, "invalid_request", str(exc))

    @app.exception_handler(VersionUnavailable)
    async def unavailable(request: Request, exc: VersionUnavailable) -> JSONResponse:
        return _error(409, "version_unavailable", str(exc))

    @app.exception_handler(VersionLoading)
    async def loading(request: Request, exc: VersionLoading) -> JSONResponse:
        return _error(503, "version_loading", str(exc), _retry_after("version_loading"))

    @app.exception_handler(NoScorerYet)
    async def no_scorer(request: Request, exc: NoScorerYet) -> JSONResponse:
        return _error(503, "no_scorer", str(exc), _retry_after("no_scorer"))

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return _error(429, "overloaded", str(exc), _retry_after("overloaded"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("Reward request %s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal", "The server could not score this request; the reason is in its log. Retry.")
