"""Drive the real app in Chromium: a server in a subprocess on a temp store, and the page steps the tests walk.

`python -m tests.e2e.browser_walk docs/screenshots` walks the same path and saves one screenshot per tab, the
pictures the README shows.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from app.handlers.score import ScoreExample, load_examples
from storage.db import make_engine, session_factory, transaction, upgrade
from storage.demo import build_demo
from storage.models import TrainingRun
from storage.settings import env_name, load_settings
from storage.users import create_user

CHROMIUM = Path(os.environ.get("JRM_TEST_CHROMIUM", "/usr/bin/chromium"))  # Debian's; tests of the guard move it
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "e2e-password"
USERS = {"ann": "annotator", "res": "researcher", "boss": "admin"}
DEMO_TASKS = 12
DEMO_SIZE = 64  # px: small pictures keep the walk's training run short
OVERLAP_TARGET = 6
START_TIMEOUT_S = 180
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Server:
    url: str
    database_url: str
    log: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare_store(data_dir: Path) -> str:
    """A migrated SQLite store with a small demo dataset and one user per role."""
    database_url = f"sqlite:///{(data_dir / 'jrm.db').as_posix()}"
    engine = make_engine(database_url)
    upgrade(engine)
    with transaction(session_factory(engine)) as session:
        # Simulated votes fill pairs up to the overlap target they are built with (2); the app then runs with
        # a higher target (OVERLAP_TARGET), so every pair still has room for the walk's annotator.
        build_demo(session, tasks=DEMO_TASKS, seed=0, settings=load_settings(environ={}, data_dir=data_dir),
                   size=DEMO_SIZE)
        for name, role in USERS.items():
            create_user(session, name=name, role=role, password=PASSWORD)
        # A finished run tells the worker this is not a fresh install, so it does not queue the default first
        # run (minutes of training on two cores); the researcher's retrain in the walk makes the first version.
        session.add(TrainingRun(status="cancelled", trigger="cli", params={}, error="e2e: no first run"))
    engine.dispose()
    return database_url


def _environment(data_dir: Path, port: int) -> dict[str, str]:
    settings = {"data_dir": str(data_dir), "auth": "1", "port": str(port), "demo_tasks": str(DEMO_TASKS),
                "torch_threads": "1", "overlap_target": str(OVERLAP_TARGET), "queue_poll_s": "1", "heartbeat_s": "2",
                "stale_after_s": "60", "retrain_check_minutes": "0"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("JRM_")}
    env.update({env_name(key): value for key, value in settings.items()})
    env.update({"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"})
    return env


@contextmanager
def running_app(data_dir: Path, log: Path) -> Iterator[Server]:
    """`python -m app` with auth on, on a free loopback port; stopped (SIGTERM) on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url = prepare_store(data_dir)
    port = _free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=_environment(data_dir, port),
                                   stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_serving(process, url, log)
            yield Server(url, database_url, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_serving(process: subprocess.Popen, url: str, log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/config", timeout=2):
                return
        except OSError as exc:
            if getattr(exc, "code", None) in (401, 403):  # auth on: the server answers, the page needs log-in
                return
            time.sleep(1)
    raise TimeoutError(f"the app did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@contextmanager
def browser_page() -> Iterator[Page]:
    """A Chromium page (Debian's chromium, headless), 1400×1000."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


# --- page steps ---------------------------------------------------------------------------------------------


def log_in(page: Page, url: str, name: str) -> None:
    """Open the app logged in as `name` (logging out whoever was logged in)."""
    page.goto(url + "/logout")
    page.goto(url)
    page.locator("input[type=text]").first.fill(name)
    page.locator("input[type=password]").first.fill(PASSWORD)
    page.get_by_role("button", name=re.compile("log ?in", re.IGNORECASE)).click()
    expect(page.locator("#who")).to_contain_text(f"Signed in as {name}", timeout=60_000)


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def votes_so_far(page: Page) -> int:
    return int(re.search(r"Your votes so far: (\d+)", page.locator("#progress").inner_text()).group(1))


def vote_with_keys(page: Page, keys: list[str], rationale: str) -> None:
    """One vote per key; the first vote carries a rationale typed with digits that must not vote."""
    expect(page.locator("#instruction")).to_contain_text("Instruction:", timeout=60_000)
    for index, key in enumerate(keys):
        before = votes_so_far(page)
        if index == 0:
            page.locator("#rationale textarea").fill("")
            page.locator("#rationale textarea").type(rationale)  # "1", "2"… inside the box are text, not votes
            assert votes_so_far(page) == before
        page.locator("#progress").click()  # focus leaves the text box; shortcuts apply again
        page.keyboard.press(key)
        expect(page.locator("#progress")).to_contain_text(f"Your votes so far: {before + 1}", timeout=30_000)
        expect(page.locator("#rationale textarea")).to_have_value("")  # the page empties the form after a vote


def record_pair_tokens(page: Page) -> list[str]:
    """The pair tokens the page sends with its votes, in the order sent (filled in as the page sends them)."""
    tokens: list[str] = []

    def on_request(request) -> None:
        if request.method == "POST" and "/queue/join" in request.url:
            data = (request.post_data_json or {}).get("data") or []
            if len(data) == 8 and isinstance(data[-1], str) and re.fullmatch(r"[0-9a-f]{32}", data[-1]):
                tokens.append(data[-1])  # a vote: shown, choice, rationale, rate, three sliders, pair token

    page.on("request", on_request)
    return tokens


def press_at_once(page: Page, keys: list[str]) -> None:
    """Press vote keys back to back (no wait for an answer in between); returns once the page counted a vote."""
    before = votes_so_far(page)
    page.locator("#progress").click()
    for key in keys:
        page.keyboard.press(key)
    expect(page.locator("#progress")).to_contain_text(f"Your votes so far: {before + 1}", timeout=30_000)
    page.wait_for_timeout(1_000)  # time for a late second vote to land, were it stored


def run_state(page: Page, run_id: int) -> tuple[str, int] | None:
    """(status, progress %) of run `run_id` in the runs table; None until the table lists it."""
    row = page.locator("#runs table tbody tr").filter(has=page.locator(f"td:first-child:text-is('{run_id}')"))
    if row.count() == 0:
        return None
    status = row.locator("td").nth(1).inner_text().strip()
    return status, int(row.locator("[role=progressbar]").get_attribute("aria-valuenow"))


def retrain_and_watch(page: Page, *, max_steps: int, timeout_s: float) -> list[tuple[float, str, int]]:
    """Queue a retrain from the research tab; (seconds since queued, status, progress %) of each change seen."""
    page.locator("#max-steps input").fill(str(max_steps))
    page.locator("#retrain").click()
    expect(page.locator("#retrain-status")).to_contain_text("Queued run", timeout=30_000)
    run_id = int(re.search(r"Queued run (\d+)", page.locator("#retrain-status").inner_text()).group(1))
    started = time.monotonic()
    seen: list[tuple[float, str, int]] = []
    while time.monotonic() - started < timeout_s:
        state = run_state(page, run_id)
        if state is None:  # the table refreshes every couple of seconds
            time.sleep(0.25)
            continue
        if not seen or seen[-1][1:] != state:
            seen.append((round(time.monotonic() - started, 1), *state))
        if state[0] in ("succeeded", "failed", "cancelled"):
            return seen
        time.sleep(0.25)
    raise TimeoutError(f"the run did not finish within {timeout_s} s; seen {seen}")


def promote_newest(page: Page, name: str, reason: str) -> None:
    """Promote the newest version (`name`, which the versions form preselects) by hand from the research tab."""
    page.locator("#refresh-versions").click()
    expect(page.locator("#version-pick input")).to_have_value(name, timeout=30_000)
    page.get_by_label("Reason for promoting").fill(reason)
    page.locator("#promote").click()
    expect(page.get_by_text(f"{name} is now active")).to_be_visible(timeout=30_000)


def write_pictures(folder: Path) -> dict[str, Path]:
    """A source picture and two edits of it for the score tab."""
    folder.mkdir(parents=True, exist_ok=True)
    source = Image.new("RGB", (96, 96), "white")
    source.paste(Image.new("RGB", (48, 48), "gray"), (24, 24))
    red = source.copy()
    red.paste(Image.new("RGB", (48, 48), "red"), (24, 24))
    paths = {"source": folder / "source.png", "red": folder / "red.png", "flipped": folder / "flipped.png"}
    source.save(paths["source"])
    red.save(paths["red"])
    source.transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(90).save(paths["flipped"])
    return paths


def score_upload(page: Page, pictures: dict[str, Path], version: str, timeout_s: float = 60) -> None:
    """Score two uploaded edits, repeating until the scores are stamped with `version` (the scorer polls)."""
    page.locator("#score-source input[type=file]").set_input_files(str(pictures["source"]))
    page.locator("#score-edits input[type=file]").set_input_files([str(pictures["red"]), str(pictures["flipped"])])
    page.locator("#score-instruction textarea").fill("make the square red")
    deadline = time.monotonic() + timeout_s
    while True:
        page.locator("#score-go").click()
        try:
            expect(page.locator("#score-status")).to_contain_text(f"model version {version}", timeout=10_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def score_example(page: Page, example: ScoreExample) -> None:
    """Click one of the Score tab's examples: it fills the inputs; score it and see one row per edit, by file name."""
    # By position, not by caption: Gradio cuts an example's label to its first 60 characters on the page.
    button = page.locator("#score-examples").get_by_role("button").nth(load_examples().index(example))
    expect(button).to_contain_text(example.instruction)
    button.click()
    # A file row shows "name .png" (stem and suffix apart); its cell's accessible name is the file name.
    expect(page.locator("#score-source").get_by_role("cell", name=example.source.name, exact=True)).to_be_visible()
    expect(page.locator("#score-instruction textarea")).to_have_value(example.instruction)
    for path in example.edits:
        expect(page.locator("#score-edits").get_by_role("cell", name=path.name, exact=True)).to_be_visible()
    page.locator("#score-go").click()
    for number, path in enumerate(example.edits, start=1):
        expect(page.locator("#score-table")).to_contain_text(f"edit {number} · {path.name}", timeout=30_000)
    rows = str(len(example.edits) + 1)  # the grid's row count includes its header row
    expect(page.locator("#score-table").get_by_role("grid")).to_have_attribute("aria-rowcount", rows)


def shoot(page: Page, folder: Path, name: str) -> Path:
    """A full-page screenshot `folder/name.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def take_tab_screenshots(folder: Path, scratch: Path) -> list[Path]:
    """Walk every tab of a fresh app (votes, a retrain, a scored upload) and save one screenshot per tab."""
    shots = []
    with running_app(scratch / "data", scratch / "app.log") as server, browser_page() as page:
        log_in(page, server.url, "ann")
        vote_with_keys(page, ["1", "2", "t"], rationale="left kept the background")
        page.locator("#progress").click()
        shots.append(shoot(page, folder, "annotate"))
        log_in(page, server.url, "res")
        open_tab(page, "Research")
        retrain_and_watch(page, max_steps=20, timeout_s=300)
        promote_newest(page, "v0001", "a researcher's call")  # a small demo is too few held-out votes for the gate
        expect(page.locator("#versions")).to_contain_text("active")
        shots.append(shoot(page, folder, "research"))
        open_tab(page, "Score")
        score_upload(page, write_pictures(scratch / "pictures"), "v0001")
        shots.append(shoot(page, folder, "score"))
        open_tab(page, "Leaderboard")
        expect(page.locator("#leaderboard-caption")).to_contain_text("Mean score", timeout=120_000)
        shots.append(shoot(page, folder, "leaderboard"))
        log_in(page, server.url, "boss")
        open_tab(page, "Admin")
        expect(page.locator("#users")).to_contain_text("boss")
        shots.append(shoot(page, folder, "admin"))
    return shots


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch_dir:
        for shot in take_tab_screenshots(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"),
                                         Path(scratch_dir)):
            print(shot)
