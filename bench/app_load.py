"""Load test of the running app: simulated annotators drive the annotate endpoints through `gradio_client`.

    python bench/app_load.py --backends sqlite,postgresql --annotators 1,16 --seconds 30

Per backend: a fresh store (a temporary SQLite file, or a new PostgreSQL schema) gets `--tasks` tasks of
`CANDIDATES` candidates each (no votes yet) and one password user per annotator; `python -m app --auth --no-worker`
starts on a free loopback port in a subprocess; every annotator logs in with its own `gradio_client` session and
loops "next pair → submit vote" for `--seconds`. Every `--double-every`-th vote is sent twice at once in the same
session (a double click). `--think-ms` adds a pause before each vote (0, the default, is a stress test: votes
back to back). Then the app is stopped and the store checked: each annotator's stored votes must
equal the votes the app answered "Vote saved." to (0 lost, 0 extra), and no `client_submission_id` and no
(pair, annotator) may appear twice. Each annotator logs in and loads a first pair before the clock starts (the
page load; untimed). Latency is per call as the client sees it (queue join + result stream),
images not downloaded. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import PIL.Image  # noqa: E402
from gradio_client import Client  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from storage.db import make_engine, session_factory, transaction, upgrade  # noqa: E402
from storage.images import store_pil_image  # noqa: E402
from storage.models import User, Vote  # noqa: E402
from storage.repository import add_candidate, create_task  # noqa: E402
from storage.settings import load_settings  # noqa: E402
from storage.users import create_user  # noqa: E402

CANDIDATES = 6  # per task → 15 pairs
CHOICES = ("left", "right", "tie", "both_bad")
PASSWORD = "bench-password-1"  # noqa: S105 - throwaway users of a throwaway store
SAVED, ALREADY = "Vote saved.", "already saved"
START_TIMEOUT_S = 600
CALL_TIMEOUT_S = 120.0


@dataclass
class Annotator:
    """One simulated annotator's session and what the app answered it."""

    name: str
    client: Client | None = None
    latencies: dict[str, list[float]] = field(default_factory=dict)
    saved: int = 0  # votes answered "Vote saved."
    already: int = 0  # answered "already saved" (the second half of a double submission)
    doubles: int = 0  # double submissions sent
    uncertain: int = 0  # vote calls that failed: stored or not, the client cannot tell
    errors: Counter = field(default_factory=Counter)
    out_of_pairs: bool = False


# --- the store -------------------------------------------------------------------------------------------------


class Store:
    """A fresh store for one backend: a SQLite file in `folder`, or a new PostgreSQL schema (dropped by close)."""

    def __init__(self, backend: str, folder: Path, postgres_url: str) -> None:
        self.backend, self._schema = backend, None
        if backend == "sqlite":
            self.url = f"sqlite:///{(folder / 'jrm.db').as_posix()}"
        else:
            self._schema = f"bench_{uuid.uuid4().hex[:10]}"
            self._admin = make_engine(postgres_url)
            with self._admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{self._schema}"'))
            url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={self._schema}"})
            self.url = url.render_as_string(hide_password=False)
        self.engine = make_engine(self.url)
        upgrade(self.engine)
        self.factory = session_factory(self.engine)

    def close(self) -> None:
        self.engine.dispose()
        if self._schema is not None:
            with self._admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{self._schema}" CASCADE'))
            self._admin.dispose()


def seed(store: Store, data_dir: Path, *, tasks: int, annotators: list[str]) -> None:
    """`tasks` tasks of `CANDIDATES` small pictures each, and one password user per annotator."""
    settings = load_settings(environ={}, data_dir=data_dir, database_url=store.url)
    rng = random.Random(0)
    with transaction(store.factory) as session:
        for index in range(tasks):
            source = store_pil_image(session, image=_picture(rng), settings=settings)
            task = create_task(
                session,
                source_image_id=source.id,
                instruction=f"make it red ({index})",
                settings=settings,
                origin="bench",
            )
            for generator in range(CANDIDATES):
                image = store_pil_image(session, image=_picture(rng), settings=settings)
                add_candidate(session, task_id=task.id, image_id=image.id, generator=f"gen-{generator}")
        for name in annotators:
            create_user(session, name=name, role="annotator", password=PASSWORD)


def _picture(rng: random.Random) -> PIL.Image.Image:
    colour = tuple(rng.randrange(256) for _ in range(3))
    image = PIL.Image.new("RGB", (64, 64), colour)
    image.paste(tuple(255 - c for c in colour), (rng.randrange(32), rng.randrange(32), 48, 48))
    return image


def check_store(store: Store, annotators: list[Annotator]) -> dict[str, int]:
    """Stored votes against the app's answers, and duplicates by submission id and by (pair, annotator)."""
    with store.factory() as session:
        ids = dict(session.execute(select(User.name, User.id).where(User.name.in_([a.name for a in annotators]))).all())
        stored = dict(
            session.execute(
                select(Vote.annotator_id, func.count())
                .where(Vote.annotator_id.in_(ids.values()))
                .group_by(Vote.annotator_id)
            ).all()
        )
        twice_by_submission = session.scalar(
            select(func.count()).select_from(
                select(Vote.client_submission_id)
                .group_by(Vote.client_submission_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
        twice_by_pair = session.scalar(
            select(func.count()).select_from(
                select(Vote.pair_id, Vote.annotator_id)
                .where(Vote.annotator_id.is_not(None))
                .group_by(Vote.pair_id, Vote.annotator_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
    lost = extra = 0
    for annotator in annotators:
        difference = stored.get(ids[annotator.name], 0) - annotator.saved
        if difference < 0:
            lost -= difference
        elif difference > annotator.uncertain:  # a failed call may or may not have stored its vote
            extra += difference - annotator.uncertain
    return {
        "stored": sum(stored.values()),
        "lost": lost,
        "extra": extra,
        "duplicate_submission_ids": twice_by_submission or 0,
        "duplicate_pair_votes": twice_by_pair or 0,
    }


# --- the app ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(store: Store, data_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    """`python -m app` on loopback with log-in on, no worker, no demo data; returns once it answers HTTP."""
    env = {
        **os.environ,
        "JRM_DATA_DIR": str(data_dir),
        "JRM_DEMO_TASKS": "0",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable,
        "-m",
        "app",
        "--auth",
        "--no-worker",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        store.url,
    ]
    log = log_path.open("wb")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
            return process
        except OSError:
            time.sleep(1)
    stop_app(process)
    raise RuntimeError(f"the app did not answer within {START_TIMEOUT_S} s:\n{_tail(log_path)}")


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()  # SIGTERM: the app stops its scorer and exits
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- the annotators --------------------------------------------------------------------------------------------


def connect(annotator: Annotator, url: str, attempts: int = 3) -> None:
    """Log in and fetch the app's config (retried: a loaded machine can miss gradio_client's timeouts)."""
    for attempt in range(attempts):
        try:
            # ssl_verify=False: plain HTTP on loopback; gradio_client opens a new httpx client per request, and
            # loading the CA bundle into each costs the client more CPU than the app spends on the call.
            annotator.client = Client(
                url,
                auth=(annotator.name, PASSWORD),
                verbose=False,
                download_files=False,
                analytics_enabled=False,
                ssl_verify=False,
                httpx_kwargs={"timeout": CALL_TIMEOUT_S},  # the default 5 s would drop the slowest calls from p95
            )
            return
        except Exception:  # noqa: BLE001 - retried, then raised
            if attempt == attempts - 1:
                raise
            time.sleep(2)


def vote_endpoint(client: Client) -> str:
    """The public vote endpoint: `/submit_vote`, or the one numbered variant Gradio made public."""
    names = [
        n
        for n in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        if n == "/submit_vote" or n.startswith("/submit_vote_")
    ]
    if "/submit_vote" in names:
        return "/submit_vote"
    if len(names) != 1:
        raise RuntimeError(f"cannot tell the public vote endpoint among {names}")
    return names[0]


def _timed(annotator: Annotator, name: str, call):
    started = time.perf_counter()
    result = call()
    annotator.latencies.setdefault(name, []).append(time.perf_counter() - started)
    return result


def _count(annotator: Annotator, outcome) -> bool:
    """Tally a vote answer; True while the app still has a pair to show."""
    status = outcome[-1] or ""
    if status.startswith(SAVED):
        annotator.saved += 1
    elif ALREADY in status:
        annotator.already += 1
    else:
        annotator.errors[f"unexpected status {status[:60]!r}"] += 1
    return outcome[1] is not None  # the source image of the next pair


def _send_twice(client: Client, endpoint: str, vote: tuple) -> list:
    """The same vote sent twice at once in one session, like a double click."""
    jobs = [client.submit(*vote, api_name=endpoint) for _ in range(2)]
    return [job.result() for job in jobs]


def annotate(
    annotator: Annotator, endpoint: str, deadline: float, double_every: int, think_s: float, seed: int
) -> None:
    """next_pair → (think) → submit_vote until the deadline (or until no pair is left for this annotator)."""
    rng, client, sent = random.Random(seed), annotator.client, 0
    while time.monotonic() < deadline:
        try:
            view = _timed(annotator, "next_pair", lambda: client.predict(api_name="/next_pair"))
        except Exception as exc:  # noqa: BLE001 - counted and reported; the run goes on
            annotator.errors[f"next_pair: {type(exc).__name__}: {str(exc)[:60]}"] += 1
            continue
        if view[1] is None:
            annotator.out_of_pairs = True
            return
        if think_s > 0:
            time.sleep(min(rng.expovariate(1 / think_s), max(0.0, deadline - time.monotonic())))
        sent += 1
        vote = (rng.choice(CHOICES), rng.choice(["", "kept the background", "ignored the colour"]), False, 0, 0, 0)
        double = double_every > 0 and sent % double_every == 0
        try:
            if double:
                annotator.doubles += 1
                outcomes = _timed(annotator, "submit_vote ×2 at once", lambda v=vote: _send_twice(client, endpoint, v))
            else:
                outcome = _timed(annotator, "submit_vote", lambda v=vote: client.predict(*v, api_name=endpoint))
                outcomes = [outcome]
        except Exception as exc:  # noqa: BLE001
            annotator.uncertain += 2 if double else 1
            annotator.errors[f"submit_vote: {type(exc).__name__}: {str(exc)[:60]}"] += 1
            continue
        if not all([_count(annotator, outcome) for outcome in outcomes]):
            annotator.out_of_pairs = True
            return


# --- one backend -----------------------------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    think_ms: float
    seconds: float
    annotators: list[Annotator]
    check: dict[str, int]


def run_backend(backend: str, n_annotators: int, args: argparse.Namespace) -> Result:
    folder = Path(tempfile.mkdtemp(prefix=f"jrm-app-load-{backend}-"))
    data_dir = folder / "data"
    store = Store(backend, folder, args.postgres_url)
    names = [f"bench-annotator-{i:02d}" for i in range(n_annotators)]
    process = None
    try:
        seed(store, data_dir, tasks=args.tasks, annotators=names)
        port = free_port()
        process = start_app(store, data_dir, port, folder / "app.log")
        annotators = [Annotator(name) for name in names]
        url = f"http://127.0.0.1:{port}/"
        for annotator in annotators:  # one at a time, before the clock starts: logins hash passwords (scrypt)
            connect(annotator, url)
            annotator.client.predict(api_name="/next_pair")  # warm-up, like the page load: reserves a first pair
        endpoint = vote_endpoint(annotators[0].client)
        started = time.monotonic()
        threads = [
            threading.Thread(
                target=annotate, args=(a, endpoint, started + args.seconds, args.double_every, args.think_ms / 1000, i)
            )
            for i, a in enumerate(annotators)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        for annotator in annotators:
            annotator.client.close()
        stop_app(process)
        process = None
        return Result(backend, args.think_ms, elapsed, annotators, check_store(store, annotators))
    finally:
        if process is not None:
            stop_app(process)
        store.close()
        shutil.rmtree(folder, ignore_errors=True)


# --- report ----------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def report(result: Result, target_p95_ms: float) -> bool:
    """Print the backend's tables; True when every check passed (latency target included)."""
    merged: dict[str, list[float]] = {}
    for annotator in result.annotators:
        for name, values in annotator.latencies.items():
            merged.setdefault(name, []).extend(values)
    calls = sum(len(v) for v in merged.values())
    print(
        f"\n{result.backend}: {len(result.annotators)} annotators (think {result.think_ms:g} ms), "
        f"{result.seconds:.1f} s, {calls} calls, "
        f"{calls / result.seconds:.1f} calls/s, {result.check['stored'] / result.seconds:.1f} votes stored/s\n"
    )
    print("| call | n | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, values in merged.items():
        ms = [v * 1000 for v in values]
        print(
            f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {percentile(ms, 95):.0f} | "
            f"{percentile(ms, 99):.0f} | {max(ms):.0f} |"
        )
    total = Counter()
    for annotator in result.annotators:
        total.update(
            saved=annotator.saved,
            already=annotator.already,
            doubles=annotator.doubles,
            uncertain=annotator.uncertain,
            out=int(annotator.out_of_pairs),
        )
    errors = sum((a.errors for a in result.annotators), Counter())
    check = result.check
    print(
        f"\nvotes answered saved {total['saved']} · stored {check['stored']} · lost {check['lost']} · "
        f"extra {check['extra']} · double submissions {total['doubles']} (answered 'already saved': "
        f"{total['already']}) · duplicate submission ids {check['duplicate_submission_ids']} · duplicate "
        f"(pair, annotator) votes {check['duplicate_pair_votes']} · failed vote calls {total['uncertain']} · "
        f"annotators out of pairs {total['out']}"
    )
    for message, count in errors.most_common(5):
        print(f"  error ×{count}: {message}")
    p95 = max(percentile([v * 1000 for v in values], 95) for values in merged.values())
    intact = check["lost"] == check["extra"] == check["duplicate_submission_ids"] == check["duplicate_pair_votes"] == 0
    print(
        f"integrity {'OK' if intact else 'FAILED'} · worst p95 {p95:.0f} ms "
        f"({'meets' if p95 < target_p95_ms else 'misses'} the {target_p95_ms:.0f} ms target)"
    )
    return intact and not errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--annotators", default="16", help="comma-separated counts, each a run of its own, e.g. 1,16")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--tasks", type=int, default=120, help=f"tasks of {CANDIDATES} candidates to annotate")
    parser.add_argument("--double-every", type=int, default=10, help="send every Nth vote twice at once (0: never)")
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="mean pause (exponential) between seeing a pair and voting; 0: back to back (stress)",
    )
    parser.add_argument("--target-p95-ms", type=float, default=300.0)
    args = parser.parse_args(argv)
    print(
        f"{platform.platform()} · Python {platform.python_version()} · {os.cpu_count()} CPUs · "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    passed = True
    for backend in args.backends.split(","):
        for n_annotators in [int(n) for n in args.annotators.split(",")]:
            passed &= report(run_backend(backend.strip(), n_annotators, args), args.target_p95_ms)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
