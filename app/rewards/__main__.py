"""`python -m app.rewards`: the reward server for RL loops, its own process (docs/reward-server.md).

It scores (source, edited, instruction) items given as JSON with the promoted version (swapped in on promotion) or
the version given by --version, batching concurrent requests on one inference thread. It binds 127.0.0.1 by default;
any other address needs JRM_REWARD_TOKEN. It reads the store (JRM_DATABASE_URL / JRM_DATA_DIR) the app writes.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from sqlalchemy.exc import SQLAlchemyError

from app.rewards.security import exposure_error
from storage.db import make_engine, session_factory
from storage.errors import NotFound
from storage.settings import Settings, SettingsError, load_settings

log = logging.getLogger("app.rewards")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.rewards", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="interface to bind (default: JRM_REWARD_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default: JRM_REWARD_PORT or 8008)")
    parser.add_argument("--version", help="serve this version (e.g. v0003) instead of following the promoted one")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: a GPU when visible, else cpu)")
    parser.add_argument("--max-batch", type=int, help="items per forward (default: JRM_REWARD_MAX_BATCH or 32)")
    parser.add_argument("--batch-wait-ms", type=float, help="wait for more items (default: JRM_REWARD_BATCH_WAIT_MS)")
    parser.add_argument("--database", help="SQLAlchemy URL (default: JRM_DATABASE_URL or SQLite in JRM_DATA_DIR)")
    return parser.parse_args(argv)


def check_device(device: str | None) -> str | None:
    """Why `device` cannot be used here, or None."""
    if device is None:
        return None
    import torch  # lazy: --help and argument errors stay quick

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        return f"--device {device!r} is not a device; use cpu, cuda or cuda:N."
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            return f"--device {device}: no CUDA GPU is visible in this process."
        if parsed.index is not None and parsed.index >= count:
            return f"--device {device}: only {count} GPU(s) are visible (cuda:0 to cuda:{count - 1})."
    elif parsed.type != "cpu":
        return f"--device {device}: only cpu and cuda devices are supported."
    return None


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from JRM_* variables with the command line's values on top."""
    return load_settings(
        database_url=args.database,
        reward_host=args.host,
        reward_port=args.port,
        reward_max_batch=args.max_batch,
        reward_batch_wait_ms=args.batch_wait_ms,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    refusal = exposure_error(settings.reward_host, settings.reward_token) or check_device(args.device)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    for stop in (signal.SIGINT, signal.SIGTERM):  # uvicorn shuts down on these, then raises them again: exit 0
        signal.signal(stop, _exit_cleanly)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from app.rewards.server import create_app  # lazy: torch models and FastAPI load once the arguments are fine
    from app.scoring import ScoringService, VersionLoading

    factory = session_factory(make_engine(settings.resolved_database_url))
    service = ScoringService(
        factory,
        settings,
        max_batch=settings.reward_max_batch,
        batch_wait_ms=settings.reward_batch_wait_ms,
        max_queue=settings.reward_max_queue,
        device=args.device,
    )
    try:
        if args.version is None:
            service.start()  # follows the promoted version: loads it in the background, swaps on promotion
        else:
            service.serving_for(args.version)  # starts the pinned version's load; health is ready once it is in
    except NotFound as exc:
        print(f"error: --version {args.version}: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"error: cannot read the store ({type(exc).__name__}); start the app once to create it.", file=sys.stderr)
        return 2
    except VersionLoading:
        pass
    app = create_app(service, settings=settings, factory=factory, default_version=args.version)
    try:
        serve(app, settings)
    finally:
        service.stop()
    return 0


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)  # unwinds through main's `finally`, which stops the scoring threads


def serve(app: object, settings: Settings) -> None:
    """Run uvicorn on the settings' host and port until SIGINT or SIGTERM (uvicorn stops gracefully on both)."""
    import uvicorn

    log.info("Reward server on http://%s:%d (docs/reward-server.md)", settings.reward_host, settings.reward_port)
    uvicorn.run(app, host=settings.reward_host, port=settings.reward_port, access_log=False, log_level="info")


if __name__ == "__main__":
    sys.exit(main())
