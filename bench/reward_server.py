"""Benchmark the reward server against the in-process scorer on the same items; print a Markdown table.

    python bench/reward_server.py                          # 1, 8 and 32 clients, 6 s per cell, 2 rounds
    python bench/reward_server.py --quick                  # CI-sized: 1 and 4 clients, 1 s, 1 round

Setup: a fresh store in a temporary folder with one promoted version of the `--backbone` preset (its reward head
untrained: speed does not depend on the weights), and `--items` demo (source, edited, instruction) items. The two
variants score the same items with the same batching settings (`--max-batch`, `--batch-wait-ms`, one inference
thread, one torch thread each):

- **in-process**: a `ScoringService` in this process; each client thread calls `score_items` with decoded pictures
  (what an RL loop holding the model itself would do).
- **server**: `python -m app.rewards` in a subprocess on a free loopback port; each client thread posts JSON bodies
  (base64 PNG, encoded before timing) with its own `httpx.Client`. The server's side is all in the timing: reading
  the body, JSON, base64, the store's image checks and decoding, scoring, the reply.

Each client sends requests of `--request-size` items back to back (a closed loop) for `--seconds`; pairs/s is
(source, edited) items scored per second over the cell, latency is per request. Per concurrency, the variants take
turns within each round (their order alternating), and the last column is the median over rounds of the per-round
ratio of server to in-process throughput. CPU per pair is read from the kernel for the cell: the scoring side is this
process for in-process and the server process for server; the client side (server only) is this process, sending
the pre-encoded bodies and parsing the replies. Before timing, the server's scores of every item are compared with
the in-process ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from app.rewards.client import build_items  # noqa: E402
from app.scoring import ScoringService  # noqa: E402
from bench.scoring_setup import build_model, describe_size  # noqa: E402
from storage.db import make_engine, session_factory, transaction, upgrade  # noqa: E402
from storage.demo_edits import demo_task  # noqa: E402
from storage.settings import Settings, load_settings  # noqa: E402
from trainer.registry import promote_version, publish_version  # noqa: E402

Triple = tuple  # (source, edited, instruction)
START_TIMEOUT_S = 300.0


# --- setup -----------------------------------------------------------------------------------------------------


def demo_items(n: int) -> list[Triple]:
    """`n` (source, edited, instruction) items from the demo tasks: each task's source with each of its candidates."""
    items: list[Triple] = []
    index = 0
    while len(items) < n:
        task = demo_task(0, index)
        items += [(task.source, candidate.image, task.instruction) for candidate in task.candidates]
        index += 1
    return items[:n]


def prepare_store(data_dir: Path, args: argparse.Namespace) -> tuple[Settings, str]:
    """A migrated store in `data_dir` whose active version is a `--backbone` JRM (its reward head untrained; with
    `--hidden/--layers`, a random-init copy with its language model resized, as in bench/scoring.py)."""
    settings = load_settings(environ={}, data_dir=data_dir)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    backbone = args.backbone
    model = build_model(backbone, args.hidden, args.layers, str(data_dir / "backbones"))
    with transaction(session_factory(engine)) as session:
        version = publish_version(
            session, save=model.save, settings=settings, backbone=backbone, config={}, metrics=None
        )
        promote_version(session, version_id=version.id, reason="bench/reward_server.py", settings=settings)
    engine.dispose()
    parameters = sum(p.numel() for p in model.parameters())
    return settings, f"{backbone} ({describe_size(model)}, {parameters / 1e6:.1f} M parameters)"


def start_server(settings: Settings, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """`python -m app.rewards` on a free port, once its health is ready; (process, base URL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {
        **os.environ,
        "JRM_DATA_DIR": str(settings.data_dir),
        "JRM_TORCH_THREADS": "1",
        "JRM_REWARD_MAX_BATCH": str(args.max_batch),
        "JRM_REWARD_BATCH_WAIT_MS": str(args.batch_wait_ms),
        "JRM_REWARD_MAX_QUEUE": str(max(1024, 2 * args.max_clients * args.request_size)),
    }
    command = [sys.executable, "-m", "app.rewards", "--port", str(port), "--device", "cpu"]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the reward server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the reward server did not become ready")
        time.sleep(0.2)


# --- the closed loop -------------------------------------------------------------------------------------------


def closed_loop(clients: int, seconds: float, send: Callable[[int, int], int]) -> tuple[int, float, list[float]]:
    """`clients` threads calling `send(client, request number) -> items scored` back to back for `seconds`;
    (items scored, wall seconds, per-request latencies in seconds)."""
    latencies: list[float] = []
    scored = [0] * clients
    errors: list[BaseException] = []
    lock, barrier = threading.Lock(), threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(number: int) -> None:
        barrier.wait()
        request = 0
        try:
            while time.perf_counter() < stop_at[0]:
                start = time.perf_counter()
                scored[number] += send(number, request)
                with lock:
                    latencies.append(time.perf_counter() - start)
                request += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(scored), time.perf_counter() - start, latencies


def in_process_sender(service: ScoringService, requests: list[list[Triple]]) -> Callable[[int, int], int]:
    def send(client: int, number: int) -> int:
        outcomes = service.score_items(requests[(client * 7919 + number) % len(requests)])
        assert all(hasattr(o, "score") for o in outcomes), outcomes
        return len(outcomes)

    return send


def server_sender(url: str, bodies: list[bytes], clients: int) -> tuple[Callable[[int, int], int], list]:
    sessions = [httpx.Client(timeout=120) for _ in range(clients)]

    def send(client: int, number: int) -> int:
        body = bodies[(client * 7919 + number) % len(bodies)]
        reply = sessions[client].post(f"{url}/v1/score", content=body, headers={"Content-Type": "application/json"})
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:300]}")
        return len(reply.json()["scores"])

    return send, sessions


def check_same_scores(service: ScoringService, url: str, items: list[Triple]) -> float:
    """The largest |server − in-process| score over every item (one request each way)."""
    local = [o.score for o in service.score_items(items)]
    body = {"items": build_items(*zip(*items, strict=True), None)}
    remote = httpx.post(f"{url}/v1/score", json=body, timeout=300).json()["scores"]
    return max(abs(a - b) for a, b in zip(local, remote, strict=True))


# --- main ------------------------------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process `pid` has used, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    service: ScoringService, url: str, server_pid: int, items: list[Triple], args: argparse.Namespace
) -> list[dict]:
    """Per concurrency and variant: throughput, latency percentiles, CPU per pair and the paired ratio."""
    size = args.request_size
    requests = [items[i : i + size] for i in range(0, len(items) - size + 1, size)]
    bodies = [json.dumps({"items": build_items(*zip(*r, strict=True), None)}).encode() for r in requests]
    rows = []
    for clients in args.clients:
        cells: dict[str, dict] = {
            variant: {"items": 0, "s": 0.0, "lat": [], "rates": [], "scorer_cpu": 0.0, "client_cpu": 0.0}
            for variant in ("in-process", "server")
        }
        send_remote, sessions = server_sender(url, bodies, clients)
        send_local = in_process_sender(service, requests)
        for round_number in range(args.rounds):
            order = ["in-process", "server"] if round_number % 2 == 0 else ["server", "in-process"]
            for variant in order:
                send = send_local if variant == "in-process" else send_remote
                own, server = time.process_time(), process_cpu_s(server_pid)
                scored, seconds, latencies = closed_loop(clients, args.seconds, send)
                own, server = time.process_time() - own, process_cpu_s(server_pid) - server
                cell = cells[variant]
                # in-process: this process scores (its client threads only call score_items); server: the server
                # process scores and this process is the HTTP client.
                cell["scorer_cpu"] += own if variant == "in-process" else server
                cell["client_cpu"] += 0.0 if variant == "in-process" else own
                cell["items"] += scored
                cell["s"] += seconds
                cell["lat"] += latencies
                cell["rates"].append(scored / seconds)
        for session in sessions:
            session.close()
        ratios = [r / b for r, b in zip(cells["server"]["rates"], cells["in-process"]["rates"], strict=True)]
        for variant, cell in cells.items():
            rows.append(
                {
                    "clients": clients,
                    "variant": variant,
                    "rate": cell["items"] / cell["s"],
                    "p50": 1000 * percentile(cell["lat"], 50),
                    "p95": 1000 * percentile(cell["lat"], 95),
                    "requests": len(cell["lat"]),
                    "scorer_cpu_ms": 1000 * cell["scorer_cpu"] / cell["items"],
                    "client_cpu_ms": 1000 * cell["client_cpu"] / cell["items"] if variant == "server" else None,
                    "ratio": statistics.median(ratios) if variant == "server" else None,
                }
            )
    return rows


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\n{args.request_size} items per request, {args.seconds:g} s per cell × {args.rounds} round(s); "
        f"max batch {args.max_batch}, batch wait {args.batch_wait_ms:g} ms\n"
    )
    print(
        "| clients | variant | pairs/s | p50 ms | p95 ms | requests | scorer CPU ms/pair | client CPU ms/pair "
        "| server / in-process |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}×"
        client = "" if row["client_cpu_ms"] is None else f"{row['client_cpu_ms']:.2f}"
        print(
            f"| {row['clients']} | {row['variant']} | {row['rate']:.1f} | {row['p50']:.0f} | {row['p95']:.0f} | "
            f"{row['requests']} | {row['scorer_cpu_ms']:.2f} | {client} | {ratio} |"
        )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="tiny-edit", help="preset of the promoted version")
    parser.add_argument("--hidden", type=int, default=0, help="resize the language model to this hidden size")
    parser.add_argument("--layers", type=int, default=0, help="... and this many layers (0, 0: the preset as is)")
    parser.add_argument("--clients", type=_ints, default=[1, 8, 32], help="concurrent clients")
    parser.add_argument("--items", type=int, default=128, help="distinct demo items the requests are cut from")
    parser.add_argument("--request-size", type=int, default=4, help="items per request")
    parser.add_argument("--seconds", type=float, default=6.0, help="closed-loop seconds per cell")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="CI-sized: 1 and 4 clients, 1 s, 1 round, 16 items")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.rounds, args.items = [1, 4], 1.0, 1, 16
    args.max_clients = max(args.clients)
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    print(f"# bench/reward_server.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
        f"torch {torch.__version__}, one torch thread per process, {args.items} items"
    )
    items = demo_items(args.items)
    with tempfile.TemporaryDirectory(prefix="bench-rewards-") as folder:
        settings, model = prepare_store(Path(folder) / "data", args)
        print(f"model: {model}")
        factory = session_factory(make_engine(settings.resolved_database_url))
        service = ScoringService(
            factory, settings, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, device="cpu"
        )
        assert service.refresh(), "the promoted version did not load"
        process, url = start_server(settings, args)
        try:
            print(
                f"largest |server − in-process| score over the {len(items)} items: "
                f"{check_same_scores(service, url, items):.2e}"
            )
            rows = measure(service, url, process.pid, items, args)
        finally:
            process.terminate()
            process.wait(60)
            service.stop()
    print_table(rows, args)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return rows


if __name__ == "__main__":
    main()
