"""Load test of the running app: simulated annotators drive the annotate endpoints through `gradio_client`.

    python bench/app_load.py --backends sqlite,postgresql --annotators 1,16 --think-ms 0,3000 --seconds 30
    python bench/app_load.py --annotators 16 --think-ms 0,3000 --baseline /tmp/app-base --rounds 3

Per run: a fresh store (a temporary SQLite file, or a new PostgreSQL schema) gets `--tasks` tasks of `CANDIDATES`
candidates each (no votes yet) and one password user per annotator; `python -m app --auth --no-worker` starts on a
free loopback port in a subprocess; every annotator logs in with its own `gradio_client` session and loops
"next pair → submit vote" for `--seconds`, each vote carrying the pair token `next_pair` returned (as the page
does). Every `--double-every`-th vote is sent twice at once in the same session (a double click); one of the two
must be answered "already saved". `--think-ms` is the mean of an exponential pause between seeing a pair and voting
(`annotate` says how runs with pauses start and end); a comma-separated list runs each. The default, 3000, is the
latency target's workload: annotators who pause, though 3 s is already quicker than a person who looks at three
images and writes a rationale. 0 votes back to back, a closed-loop stress test: it measures capacity (the app's
calls/s at saturation), and its latency is about the number of annotators over that throughput, whatever the app.
Then the app is stopped and the store checked: each annotator's stored votes must
equal the votes the app answered "Vote saved." to (0 lost, 0 extra), and no `client_submission_id` and no
(pair, annotator) may appear twice. Each annotator logs in and loads a first pair before the clock starts (the
page load; untimed). Latency is per call as the client sees it (queue join + result stream), images not
downloaded; `gradio_client` looks for a call's result every 50 ms, so each includes up to 50 ms of that polling
(≈ 55 ms at one annotator). The app's CPU time (from /proc) over the timed window is reported per call, with its
idle CPU (measured for `IDLE_S` before the clock starts) and the load average.

`--baseline DIR` serves another checkout (e.g. `git worktree add /tmp/app-base HEAD`) with the same bench, store
layout and client, alternating with this one run by run (`--rounds` of each, order swapped every round), and
prints the ratios this / baseline. The baseline runs on `DIR/.venv`'s Python when it has one, so two sets of
installed packages can be compared too. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import PIL.Image  # noqa: E402
from gradio_client import Client  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from storage.db import create_scratch_schema, make_engine, session_factory, transaction, upgrade  # noqa: E402
from storage.images import store_pil_image  # noqa: E402
from storage.models import User, Vote  # noqa: E402
from storage.repository import add_candidate, create_task  # noqa: E402
from storage.settings import load_settings  # noqa: E402
from storage.users import create_user  # noqa: E402

CANDIDATES = 6  # per task → 15 pairs
CHOICES = ("left", "right", "tie", "both_bad")
PASSWORD = "bench-password-1"  # noqa: S105 - throwaway users of a throwaway store
SAVED, ALREADY = "Vote saved.", "already saved"
VOTE_ENDPOINT = "/submit_vote"
DOUBLE = "submit_vote ×2 at once"  # the latency name of a double submission (two calls), until both are answered
FIRST = "submit_vote ×2: first answer"  # the same submissions until the first answer: when the page moves on
IDLE_S = 3.0  # the app's idle CPU is measured for this long before the clock starts
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
    sends_token: bool = True  # the app's submit_vote takes the pair token (apps before it do not)
    errors: Counter = field(default_factory=Counter)
    out_of_pairs: bool = False


# --- the store -------------------------------------------------------------------------------------------------


class Store:
    """A fresh store for one backend: a SQLite file in `folder`, or a new PostgreSQL schema (dropped by close)."""

    def __init__(self, backend: str, folder: Path, postgres_url: str) -> None:
        self.backend, self._drop_schema = backend, None
        if backend == "sqlite":
            self.url = f"sqlite:///{(folder / 'jrm.db').as_posix()}"
        else:
            self.url, self._drop_schema = create_scratch_schema(postgres_url, prefix="bench")
        self.engine = make_engine(self.url)
        upgrade(self.engine)
        self.factory = session_factory(self.engine)

    def close(self) -> None:
        self.engine.dispose()
        if self._drop_schema is not None:
            self._drop_schema()


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


def start_app(store: Store, data_dir: Path, port: int, log_path: Path, app_root: Path = REPO) -> subprocess.Popen:
    """`python -m app` of the checkout `app_root` on loopback with log-in on, no worker, no demo data; returns
    once it answers HTTP."""
    env = {
        **os.environ,
        "JRM_DATA_DIR": str(data_dir),
        "JRM_DEMO_TASKS": "0",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        str(app_python(app_root)),
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
    process = subprocess.Popen(command, cwd=app_root, env=env, stdout=log, stderr=subprocess.STDOUT)
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


def app_python(app_root: Path) -> Path:
    """The interpreter that serves the checkout `app_root`: its own `.venv` when it has one (so a baseline can run
    with other packages installed), otherwise the bench's."""
    own = app_root / ".venv" / "bin" / "python"
    return own if app_root != REPO and own.exists() else Path(sys.executable)


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()  # SIGTERM: the app stops its scorer and exits
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process (every annotator thread and its `gradio_client`)."""
    times = os.times()
    return times.user + times.system


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
            api = annotator.client.view_api(print_info=False, return_format="dict")
            parameters = api["named_endpoints"][VOTE_ENDPOINT]["parameters"]
            annotator.sends_token = any(p["parameter_name"] == "pair_token" for p in parameters)  # older apps: none
            return
        except Exception:  # noqa: BLE001 - retried, then raised
            if attempt == attempts - 1:
                raise
            time.sleep(2)


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


def _send_twice(annotator: Annotator, client: Client, vote: tuple) -> list:
    """The same vote sent twice at once in one session, like a double click; also times the first answer."""
    started = time.perf_counter()
    jobs = [client.submit(*vote, api_name=VOTE_ENDPOINT) for _ in range(2)]
    concurrent.futures.wait([job.future for job in jobs], return_when=concurrent.futures.FIRST_COMPLETED)
    annotator.latencies.setdefault(FIRST, []).append(time.perf_counter() - started)
    return [job.result() for job in jobs]


def annotate(annotator: Annotator, deadline: float, double_every: int, think_s: float, seed: int) -> None:
    """next_pair → (think) → submit_vote until the deadline (or until no pair is left for this annotator).

    With a think time the annotators start at random moments within the first mean pause rather than all at once,
    and one whose pause would end after the deadline stops there: no burst of votes at either end of the run.
    """
    rng, client, sent = random.Random(seed), annotator.client, 0
    if think_s > 0:
        time.sleep(rng.uniform(0, think_s))
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
            pause = rng.expovariate(1 / think_s)
            if time.monotonic() + pause >= deadline:
                return
            time.sleep(pause)
        sent += 1
        # The pair token (the last output) says which pair the vote is for, as the page sends it.
        vote = (rng.choice(CHOICES), rng.choice(["", "kept the background", "ignored the colour"]), False, 0, 0, 0)
        vote += (view[-1],) if annotator.sends_token else ()
        double = double_every > 0 and sent % double_every == 0
        try:
            if double:
                annotator.doubles += 1
                outcomes = _timed(annotator, DOUBLE, lambda v=vote: _send_twice(annotator, client, v))
            else:
                outcome = _timed(annotator, "submit_vote", lambda v=vote: client.predict(*v, api_name=VOTE_ENDPOINT))
                outcomes = [outcome]
        except Exception as exc:  # noqa: BLE001
            annotator.uncertain += 2 if double else 1
            annotator.errors[f"submit_vote: {type(exc).__name__}: {str(exc)[:60]}"] += 1
            continue
        if not all([_count(annotator, outcome) for outcome in outcomes]):
            annotator.out_of_pairs = True
            return


# --- one run ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    backend: str
    annotators: int
    think_ms: float


@dataclass
class Result:
    app: str  # "this" (the checkout the bench is in) or "baseline"
    case: Case
    seconds: float
    annotators: list[Annotator]
    check: dict[str, int]
    server_cpu_s: float  # the app process's CPU time over the timed window
    idle_cores: float  # the app's CPU use while no request is in flight, in cores
    client_cpu_s: float  # this process's CPU time over the timed window (every annotator and its client)
    load: tuple[float, float]  # 1-minute load average at the start and at the end of the timed window

    @property
    def latencies(self) -> dict[str, list[float]]:
        merged: dict[str, list[float]] = {}
        for annotator in self.annotators:
            for name, values in annotator.latencies.items():
                merged.setdefault(name, []).extend(values)
        return merged

    @property
    def calls(self) -> int:  # a double submission is two calls (its first-answer time is no call of its own)
        per_sample = {DOUBLE: 2, FIRST: 0}
        return sum(len(v) * per_sample.get(name, 1) for name, v in self.latencies.items())

    def p(self, name: str, q: float) -> float:
        """Latency percentile `q` of the calls called `name`, in ms (nan when there were none)."""
        values = self.latencies.get(name)
        return percentile([v * 1000 for v in values], q) if values else float("nan")

    @property
    def worst_p95(self) -> float:
        return max(self.p(name, 95) for name in self.latencies)

    @property
    def doubles_stored_twice(self) -> int:
        """Double submissions not answered "already saved": each stored a second vote (on the next pair)."""
        return sum(a.doubles - a.already for a in self.annotators)

    @property
    def intact(self) -> bool:
        keys = ("lost", "extra", "duplicate_submission_ids", "duplicate_pair_votes")
        return not any(self.check[key] for key in keys) and self.doubles_stored_twice == 0


def run_case(app: str, app_root: Path, case: Case, args: argparse.Namespace) -> Result:
    folder = Path(tempfile.mkdtemp(prefix=f"jrm-app-load-{case.backend}-"))
    data_dir = folder / "data"
    store = Store(case.backend, folder, args.postgres_url)
    names = [f"bench-annotator-{i:02d}" for i in range(case.annotators)]
    process = None
    try:
        seed(store, data_dir, tasks=args.tasks, annotators=names)
        port = free_port()
        process = start_app(store, data_dir, port, folder / "app.log", app_root)
        annotators = [Annotator(name) for name in names]
        url = f"http://127.0.0.1:{port}/"
        for annotator in annotators:  # one at a time, before the clock starts: logins hash passwords (scrypt)
            connect(annotator, url)
            annotator.client.predict(api_name="/next_pair")  # warm-up, like the page load: reserves a first pair
        idle_from = cpu_seconds(process.pid)
        time.sleep(IDLE_S)
        idle_cores = (cpu_seconds(process.pid) - idle_from) / IDLE_S
        load_start, server_from, client_from = os.getloadavg()[0], cpu_seconds(process.pid), own_cpu_seconds()
        started = time.monotonic()
        threads = [
            threading.Thread(
                target=annotate, args=(a, started + args.seconds, args.double_every, case.think_ms / 1000, i)
            )
            for i, a in enumerate(annotators)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        server_cpu, client_cpu = cpu_seconds(process.pid) - server_from, own_cpu_seconds() - client_from
        load = (load_start, os.getloadavg()[0])
        for annotator in annotators:
            annotator.client.close()
        stop_app(process)
        process = None
        check = check_store(store, annotators)
        return Result(app, case, elapsed, annotators, check, server_cpu, idle_cores, client_cpu, load)
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
    """Print one run's tables; True when its checks passed (the latency target is reported, not required)."""
    case, calls = result.case, result.calls
    print(
        f"\n{result.app} · {case.backend}: {case.annotators} annotators (think {case.think_ms:g} ms), "
        f"{result.seconds:.1f} s, {calls} calls, {calls / result.seconds:.1f} calls/s, "
        f"{result.check['stored'] / result.seconds:.1f} votes stored/s · app CPU "
        f"{_per_call(result.server_cpu_s, calls)} ms/call ({result.server_cpu_s / result.seconds:.2f} cores; idle "
        f"{result.idle_cores:.2f}) · client CPU {_per_call(result.client_cpu_s, calls)} ms/call · load average "
        f"{result.load[0]:.1f} → {result.load[1]:.1f}\n"
    )
    print("| call | n | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, values in result.latencies.items():
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
        f"{total['already']}; stored twice: {result.doubles_stored_twice}) · duplicate submission ids {check['duplicate_submission_ids']} · duplicate "
        f"(pair, annotator) votes {check['duplicate_pair_votes']} · failed vote calls {total['uncertain']} · "
        f"annotators out of pairs {total['out']}"
    )
    for message, count in errors.most_common(5):
        print(f"  error ×{count}: {message}")
    p95 = result.worst_p95
    print(
        f"integrity {'OK' if result.intact else 'FAILED'} · worst p95 {p95:.0f} ms "
        f"({'meets' if p95 < target_p95_ms else 'misses'} the {target_p95_ms:.0f} ms target)"
    )
    return result.intact and not errors


def _ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.0f}"


def _per_call(seconds: float, calls: int) -> str:
    return f"{1000 * seconds / calls:.1f}" if calls else "–"


def summary(results: list[Result]) -> None:
    """One row per run, in the order run."""
    print(
        "\n| app | backend | annotators | think ms | calls/s | votes stored/s | next_pair p50 / p95 ms | "
        "submit_vote p50 / p95 ms | ×2 at once p95 ms: both (first) answers | app CPU ms/call | app cores (idle) | client CPU ms/call | "
        "load avg | lost / extra / dup |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        c, dup = r.check, r.check["duplicate_submission_ids"] + r.check["duplicate_pair_votes"]
        print(
            f"| {r.app} | {r.case.backend} | {r.case.annotators} | {r.case.think_ms:g} | {r.calls / r.seconds:.1f} | "
            f"{c['stored'] / r.seconds:.1f} | {r.p('next_pair', 50):.0f} / {r.p('next_pair', 95):.0f} | "
            f"{r.p('submit_vote', 50):.0f} / {r.p('submit_vote', 95):.0f} | {_ms(r.p(DOUBLE, 95))} ({_ms(r.p(FIRST, 95))}) | "
            f"{_per_call(r.server_cpu_s, r.calls)} | "
            f"{r.server_cpu_s / r.seconds:.2f} ({r.idle_cores:.2f}) | {_per_call(r.client_cpu_s, r.calls)} | "
            f"{r.load[0]:.1f}–{r.load[1]:.1f} | {c['lost']} / {c['extra']} / {dup} |"
        )


RATIOS = {  # column → value of one run; the table shows each app's median over its rounds
    "calls/s": lambda r: r.calls / r.seconds,
    "next_pair p95 ms": lambda r: r.p("next_pair", 95),
    "submit_vote p95 ms": lambda r: r.p("submit_vote", 95),
    "app CPU ms/call": lambda r: 1000 * r.server_cpu_s / max(r.calls, 1),
}


def ratios(results: list[Result]) -> None:
    """Per case: this checkout's and the baseline's medians over their rounds, and this / baseline."""
    print("\n| backend | annotators | think ms | rounds | " + " | ".join(
        f"{name}: this / baseline (ratio)" for name in RATIOS) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(RATIOS))
    for case in dict.fromkeys(r.case for r in results):
        runs = {app: [r for r in results if r.case == case and r.app == app] for app in ("this", "baseline")}
        cells = []
        for value in RATIOS.values():
            this, base = (statistics.median(value(r) for r in runs[app]) for app in ("this", "baseline"))
            cells.append(f"{this:.1f} / {base:.1f} ({this / base:.2f}×)")
        print(f"| {case.backend} | {case.annotators} | {case.think_ms:g} | {len(runs['this'])} | "
              + " | ".join(cells) + " |")


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
        default="3000",
        help="comma-separated means of the exponential pause between seeing a pair and voting, each a run of its "
        "own; 0: back to back (a stress test of capacity)",
    )
    parser.add_argument("--baseline", type=Path, help="another checkout whose app runs alternately with this one")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each case (of each app with --baseline)")
    parser.add_argument("--target-p95-ms", type=float, default=300.0)
    args = parser.parse_args(argv)
    apps = [("this", REPO)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    print(
        f"{platform.platform()} · Python {platform.python_version()} · {os.cpu_count()} CPUs · "
        f"load average {os.getloadavg()[0]:.1f} · apps: "
        + ", ".join(f"{name} = {root} ({app_python(root)})" for name, root in apps)
    )
    cases = [
        Case(backend.strip(), int(n), float(think))
        for backend in args.backends.split(",")
        for n in args.annotators.split(",")
        for think in args.think_ms.split(",")
    ]
    passed, results = True, []
    for case in cases:
        for round_ in range(args.rounds):
            for app, root in apps if round_ % 2 == 0 else apps[::-1]:  # ABBA: drift in the load falls on both
                result = run_case(app, root, case, args)
                passed &= report(result, args.target_p95_ms)
                results.append(result)
    summary(results)
    if args.baseline:
        ratios(results)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
