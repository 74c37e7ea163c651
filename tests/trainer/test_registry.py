"""The model registry: atomic publish, applying the gate's decision, manual promotion, rollback, loading, scores.

The gate's decision itself (the bootstrap, the floor) is tested without a DB in test_gate.py; here a decision is
made by hand and the tests check how the registry applies it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sqlalchemy import func, select

from storage.errors import InvalidInput, NotFound
from storage.models import Candidate, Image, ModelVersion, Score, Task
from trainer.gate import GateDecision
from trainer.registry import (
    MANIFEST,
    ActiveChanged,
    VersionFilesError,
    active_version,
    add_version,
    apply_promotion_gate,
    cached_scores,
    list_versions,
    load_scorer,
    promote_version,
    publish_version,
    record_scores,
    rollback,
    stage_version,
    sweep_incomplete,
    switch,
    verify_version_files,
    version_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


class TinyModel:
    """Stands in for JointRewardModel: one tensor in safetensors plus a JSON config."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def save(self, folder: Path) -> None:
        save_file({"weight": self.weight}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"shape": list(self.weight.shape)}))

    @classmethod
    def load(cls, path: Path, *, device: str = "cpu") -> TinyModel:
        return cls(load_file(str(path / "model.safetensors"), device=device)["weight"])


def publish(session, settings, *, accuracy: float | None = None, seed: int = 0, **extra) -> ModelVersion:
    metrics = None if accuracy is None else {"heldout_accuracy": accuracy}
    model = TinyModel(torch.arange(4, dtype=torch.float32) + seed)
    return publish_version(
        session, save=model.save, settings=settings, backbone="tiny", config={"seed": seed}, metrics=metrics, **extra
    )


def measured(promoted: bool, against: ModelVersion | None, *, reason: str | None = None) -> GateDecision:
    """A decision as `trainer.judge` would hand it over, measured against the active version `against`."""
    reason = reason or ("beats the floor" if promoted else "does not beat the floor")
    record = {"promoted": promoted, "reason": reason, "n_tasks": 25}
    return GateDecision(promoted, reason, None if against is None else against.id, promoted, record)


def gate(session, settings, version: ModelVersion, promoted: bool = True) -> GateDecision:
    """Apply a decision measured against the version active now."""
    decision = measured(promoted, active_version(session))
    return apply_promotion_gate(session, version_id=version.id, decision=decision, settings=settings)


def statuses(session) -> dict[str, str]:
    session.expire_all()
    return {v.name: v.status for v in list_versions(session)}


def leftovers(settings) -> list[str]:
    return sorted(p.name for p in settings.registry_dir.iterdir() if p.name.startswith(".tmp-"))


def version_folders(settings) -> list[str]:
    return sorted(p.name for p in settings.registry_dir.iterdir() if not p.name.startswith("."))


# --- publish ---------------------------------------------------------------------------------------------


def test_publish_writes_a_complete_candidate_with_a_manifest(session, settings):
    first = publish(session, settings, accuracy=0.8)
    second = publish(session, settings, accuracy=0.7, seed=1)
    session.commit()

    assert (first.name, second.name) == ("v0001", "v0002")
    assert first.status == "candidate" and first.metrics == {"heldout_accuracy": 0.8}
    folder = version_dir(settings, first)
    assert folder == settings.registry_dir / "v0001"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["name"] == "v0001" and manifest["created_at"]
    assert set(manifest["files"]) == {"model.safetensors", "config.json"}
    verify_version_files(folder)
    assert leftovers(settings) == [] and version_folders(settings) == ["v0001", "v0002"]
    assert [v.name for v in list_versions(session)] == ["v0002", "v0001"]
    assert active_version(session) is None


def test_publish_leaves_the_commit_to_the_caller(session, settings):
    publish(session, settings, accuracy=0.8)
    session.rollback()  # e.g. the worker failed after publishing: the folder has no row now
    assert list_versions(session) == []

    version = publish(session, settings, accuracy=0.8, seed=1)
    session.commit()

    verify_version_files(version_dir(settings, version))
    assert TinyModel.load(version_dir(settings, version)).weight[0] == 1  # not the orphan's files
    sweep_incomplete(settings)
    assert leftovers(settings) == []


def test_save_raising_halfway_leaves_no_version(session, settings):
    def broken_save(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half a checkpoint")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish_version(session, save=broken_save, settings=settings, backbone="tiny", config={}, metrics=None)
    session.commit()

    assert list_versions(session) == [] and version_folders(settings) == [] and leftovers(settings) == []
    version = publish(session, settings, accuracy=0.8)
    session.commit()
    verify_version_files(version_dir(settings, version))


KILLED_PUBLISH = """
import sys, time
from pathlib import Path
from storage.db import make_engine, session_factory
from storage.settings import load_settings
from trainer.registry import publish_version

url, data_dir, marker = sys.argv[1:4]
settings = load_settings(environ={}, data_dir=Path(data_dir))

def save(folder):
    (folder / "model.safetensors").write_bytes(b"partial")
    Path(marker).write_text(str(folder))
    time.sleep(120)

with session_factory(make_engine(url))() as session:
    publish_version(session, save=save, settings=settings, backbone="tiny", config={}, metrics=None)
    session.commit()
"""


def _start_killable_publish(db_url: str, settings, marker: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-c", KILLED_PUBLISH, db_url, str(settings.data_dir), str(marker)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"publish subprocess exited early: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("publish subprocess never reached save()")
        time.sleep(0.05)
    return process


def test_publish_killed_inside_save_never_becomes_visible(session, settings, db_url, tmp_path):
    complete = publish(session, settings, accuracy=0.8)
    gate(session, settings, complete)
    session.commit()

    process = _start_killable_publish(db_url, settings, tmp_path / "in-save")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()

    partial = Path((tmp_path / "in-save").read_text())
    assert partial.is_dir() and partial.name.startswith(".tmp-")
    assert [v.name for v in list_versions(session)] == ["v0001"]
    assert active_version(session).name == "v0001"
    assert load_scorer(session, settings=settings, loader=TinyModel.load)[0].name == "v0001"
    assert version_folders(settings) == ["v0001"]

    assert sweep_incomplete(settings) == [partial]
    assert leftovers(settings) == []
    following = publish(session, settings, accuracy=0.9)
    session.commit()
    verify_version_files(version_dir(settings, following))
    assert gate(session, settings, following).promoted


def test_sweep_leaves_a_publish_in_progress_alone(factory, settings):
    inside_save, finish = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_save(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"weights")
        inside_save.set()
        finish.wait(30)

    def worker() -> None:
        try:
            with factory() as session:
                publish_version(session, save=slow_save, settings=settings, backbone="tiny", config={}, metrics=None)
                session.commit()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside_save.wait(30)
    assert sweep_incomplete(settings) == [] and len(leftovers(settings)) == 2  # the folder and its lock
    with factory() as other:  # a slow save holds no DB transaction: other writers (votes) go on
        other.add(Image(sha256="1" * 64, width=8, height=8, format="png", byte_size=10))
        other.commit()
    finish.set()
    thread.join(30)

    assert errors == [] and leftovers(settings) == []
    with factory() as session:
        verify_version_files(version_dir(settings, list_versions(session)[0]))


def test_concurrent_publishes_get_distinct_names(factory, settings):
    names: list[str] = []

    def worker(seed: int) -> None:
        with factory() as session:
            names.append(publish(session, settings, accuracy=0.5, seed=seed).name)
            session.commit()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(names) == ["v0001", "v0002", "v0003", "v0004"]
    assert version_folders(settings) == sorted(names) and leftovers(settings) == []


def test_a_staged_version_that_is_not_added_leaves_nothing(session, settings):
    save = TinyModel(torch.ones(2)).save
    with stage_version(save=save, settings=settings, backbone="tiny", config={}, metrics=None) as staged:
        assert set(staged.files) == {"model.safetensors", "config.json"} and staged.folder.name.startswith(".tmp-")
        assert not session.in_transaction()  # staging touches no database
    assert list(settings.registry_dir.iterdir()) == [] and list_versions(session) == []

    metrics = {"heldout_accuracy": 1.0}
    with stage_version(save=save, settings=settings, backbone="tiny", config={}, metrics=metrics) as staged:
        version = add_version(session, staged)
    session.commit()
    assert version.name == "v0001" and version_folders(settings) == ["v0001"] and leftovers(settings) == []
    verify_version_files(version_dir(settings, version))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"backbone": " "}, InvalidInput, "backbone"),
        ({"metrics": {"heldout_accuracy": float("nan")}}, InvalidInput, "NaN"),
        ({"config": ["not", "a", "dict"]}, InvalidInput, "config must be a dict"),
        ({"run_id": 999}, NotFound, "training run"),
        ({"save": lambda folder: None}, InvalidInput, "no files"),
        ({"save": lambda folder: (folder / MANIFEST).write_text("{}")}, InvalidInput, "reserves"),
    ],
)
def test_publish_refuses_bad_input_and_leaves_nothing(session, settings, kwargs, error, message):
    arguments = {"save": TinyModel(torch.zeros(2)).save, "backbone": "tiny", "config": {}, "metrics": None, **kwargs}
    with pytest.raises(error, match=message):
        publish_version(session, settings=settings, **arguments)
    assert list_versions(session) == []
    assert not settings.registry_dir.exists() or version_folders(settings) == leftovers(settings) == []


# --- verify_version_files --------------------------------------------------------------------------------


def test_verify_version_files_names_what_is_wrong(session, settings):
    folder = version_dir(settings, publish(session, settings, accuracy=0.8))

    (folder / "config.json").write_text('{"shape": [5]}')
    with pytest.raises(VersionFilesError, match=r"config\.json does not match its sha256"):
        verify_version_files(folder)
    (folder / "config.json").unlink()
    with pytest.raises(VersionFilesError, match=r"config\.json is listed in the manifest but missing"):
        verify_version_files(folder)
    (folder / MANIFEST).write_text(json.dumps({"files": {"../v0002/config.json": {"sha256": "0"}}}))
    with pytest.raises(VersionFilesError, match="outside the version folder"):
        verify_version_files(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(VersionFilesError, match="not valid JSON"):
        verify_version_files(folder)
    (folder / MANIFEST).unlink()
    with pytest.raises(VersionFilesError, match=r"no manifest\.json"):
        verify_version_files(folder)
    with pytest.raises(VersionFilesError, match="is missing"):
        verify_version_files(folder.with_name("v9999"))


def test_version_dir_refuses_paths_outside_the_registry(session, settings):
    version = publish(session, settings)
    version.path = "../../etc"
    with pytest.raises(VersionFilesError, match="plain folder name"):
        version_dir(settings, version)


# --- the promotion gate ----------------------------------------------------------------------------------


def test_gate_promotes_the_first_version_and_records_the_decision(session, settings):
    version = publish(session, settings, accuracy=0.6)

    decision = gate(session, settings, version)

    assert decision.promoted and decision.reason == "beats the floor"
    assert version.status == "active" and version.promoted_at is not None and version.reason == decision.reason
    assert version.metrics == {"heldout_accuracy": 0.6, "gate": decision.record}  # the metrics kept, the gate added
    assert active_version(session) is version


def test_gate_promotes_and_retires_the_previous(session, settings):
    old = publish(session, settings, accuracy=0.81)
    gate(session, settings, old)
    new = publish(session, settings, accuracy=0.80)

    decision = apply_promotion_gate(
        session, version_id=new.id, decision=measured(True, old, reason="+0.01 vs active v0001"), settings=settings
    )
    session.commit()

    assert decision.promoted and new.reason == "+0.01 vs active v0001"
    assert statuses(session) == {"v0001": "retired", "v0002": "active"}
    assert old.reason == "replaced by v0002"


def test_gate_rejects_and_keeps_the_active(session, settings):
    gate(session, settings, publish(session, settings, accuracy=0.80))
    worse = publish(session, settings, accuracy=0.62)

    decision = gate(session, settings, worse, promoted=False)
    session.commit()

    assert not decision.promoted
    assert statuses(session) == {"v0001": "active", "v0002": "rejected"}
    assert worse.reason == decision.reason == "does not beat the floor" and worse.promoted_at is None
    assert worse.metrics["gate"] == {"promoted": False, "reason": "does not beat the floor", "n_tasks": 25}


def test_gate_refuses_a_decision_measured_against_another_active_version(session, settings):
    first, second = publish(session, settings, accuracy=0.8), publish(session, settings, accuracy=0.9, seed=1)
    stale = measured(True, None)  # measured while nothing was active…
    gate(session, settings, first)  # …then v0001 was promoted

    with pytest.raises(ActiveChanged, match=r"compared with none, now v0001"):
        apply_promotion_gate(session, version_id=second.id, decision=stale, settings=settings)
    assert statuses(session) == {"v0002": "candidate", "v0001": "active"}  # nothing written

    # A rejection that does not depend on the active version (below the floor) stands whatever is active.
    below = GateDecision(False, "does not beat the floor", None, False, {"promoted": False})
    assert not apply_promotion_gate(session, version_id=second.id, decision=below, settings=settings).promoted
    assert statuses(session) == {"v0002": "rejected", "v0001": "active"}


def test_gate_rejects_a_version_whose_files_are_corrupt(session, settings):
    version = publish(session, settings, accuracy=0.9)
    (version_dir(settings, version) / "model.safetensors").write_bytes(b"bit rot")

    decision = gate(session, settings, version)

    assert not decision.promoted and "does not match its sha256" in decision.reason
    assert version.status == "rejected" and version.metrics["gate"]["reason"] == decision.reason
    assert version.metrics["gate"]["promoted"] is False


def test_gate_refuses_bad_arguments(session, settings):
    version = publish(session, settings, accuracy=0.9)
    with pytest.raises(NotFound, match="No model version with id 999"):
        apply_promotion_gate(session, version_id=999, decision=measured(True, None), settings=settings)
    gate(session, settings, version)
    with pytest.raises(InvalidInput, match="only candidates go through the gate"):
        apply_promotion_gate(session, version_id=version.id, decision=measured(True, version), settings=settings)


def test_concurrent_gates_leave_exactly_one_active(factory, settings, monkeypatch):
    with factory() as session:
        ids = [publish(session, settings, accuracy=a, seed=i).id for i, a in enumerate([0.7, 0.9, 0.8, 0.6])]
        session.commit()
    read_active = switch._current_active

    def slow_read(session):  # widen the read-then-switch window: without the lock both would see "none"
        found = read_active(session)
        time.sleep(0.2)
        return found

    monkeypatch.setattr(switch, "_current_active", slow_read)
    barrier, decisions, errors = threading.Barrier(len(ids)), [], []

    def worker(version_id: int) -> None:
        try:
            with factory() as session:
                barrier.wait(10)
                decision = measured(True, None)  # each measured while nothing was active yet
                decisions.append(apply_promotion_gate(session, version_id=version_id, decision=decision,
                                                      settings=settings))  # fmt: skip
                session.commit()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(version_id,)) for version_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # The first to take the lock promotes; the others find an active version they were not measured against.
    assert len(decisions) == 1 and decisions[0].promoted
    assert len(errors) == 3 and all(isinstance(exc, ActiveChanged) for exc in errors), errors
    with factory() as session:
        final = statuses(session)
    assert sorted(final.values()) == ["active", "candidate", "candidate", "candidate"]


# --- manual promotion and rollback -----------------------------------------------------------------------


def test_promote_version_overrides_the_gate_and_revives_rejected_versions(session, settings):
    good = publish(session, settings, accuracy=0.9)
    gate(session, settings, good)
    rejected = publish(session, settings, accuracy=0.1)
    gate(session, settings, rejected, promoted=False)

    promoted = promote_version(
        session, version_id=rejected.id, reason="alice: better on the new categories", settings=settings
    )
    session.commit()

    assert promoted is rejected and rejected.reason == "alice: better on the new categories"
    assert statuses(session) == {"v0001": "retired", "v0002": "active"}
    promote_version(session, version_id=good.id, reason="back to v0001", settings=settings)
    assert statuses(session) == {"v0001": "active", "v0002": "retired"}


def test_promote_version_refuses_bad_requests(session, settings):
    active = publish(session, settings, accuracy=0.9)
    gate(session, settings, active)
    other = publish(session, settings, accuracy=0.5)
    with pytest.raises(NotFound):
        promote_version(session, version_id=999, reason="x", settings=settings)
    with pytest.raises(InvalidInput, match="needs a reason"):
        promote_version(session, version_id=other.id, reason="  ", settings=settings)
    with pytest.raises(InvalidInput, match="already the active version"):
        promote_version(session, version_id=active.id, reason="x", settings=settings)


def test_promote_version_refuses_missing_or_corrupt_files(session, settings):
    gate(session, settings, publish(session, settings, accuracy=0.9))
    other = publish(session, settings, accuracy=0.5)
    folder = version_dir(settings, other)
    (folder / "config.json").write_text("{}")
    with pytest.raises(VersionFilesError, match="does not match its sha256"):
        promote_version(session, version_id=other.id, reason="x", settings=settings)
    os.replace(folder, folder.with_name("moved"))
    with pytest.raises(VersionFilesError, match="v0002 is missing"):
        promote_version(session, version_id=other.id, reason="x", settings=settings)
    assert statuses(session) == {"v0001": "active", "v0002": "candidate"}


def test_rollback_walks_back_through_previously_active_versions(session, settings):
    versions = [publish(session, settings, accuracy=0.5 + i / 10, seed=i) for i in range(3)]
    for version in versions:
        assert gate(session, settings, version).promoted

    assert rollback(session, settings=settings).name == "v0002"
    assert statuses(session) == {"v0003": "retired", "v0002": "active", "v0001": "retired"}
    assert versions[2].reason == "rolled back" and versions[1].reason == "restored by rollback from v0003"
    assert rollback(session, settings=settings).name == "v0001"  # not back to the rolled-back v0003
    with pytest.raises(InvalidInput, match="no version was active before v0001"):
        rollback(session, settings=settings)
    session.commit()

    fourth = publish(session, settings, accuracy=0.4, seed=3)
    promote_version(session, version_id=fourth.id, reason="try it", settings=settings)
    assert rollback(session, settings=settings).name == "v0001"


def test_rollback_after_repromoting_an_old_version_returns_to_the_one_it_replaced(session, settings):
    versions = [publish(session, settings, accuracy=0.5, seed=i) for i in range(3)]
    for version in versions:
        gate(session, settings, version)
    promote_version(session, version_id=versions[0].id, reason="v0001 again", settings=settings)

    assert rollback(session, settings=settings).name == "v0003"
    assert rollback(session, settings=settings).name == "v0002"


def test_rollback_refuses_when_there_is_nothing_to_return_to(session, settings):
    with pytest.raises(InvalidInput, match="no version is active"):
        rollback(session, settings=settings)
    first = publish(session, settings, accuracy=0.5)
    gate(session, settings, first)
    second = publish(session, settings, accuracy=0.6)
    gate(session, settings, second)
    os.replace(version_dir(settings, first), settings.registry_dir / "gone")

    with pytest.raises(VersionFilesError, match="v0001 is missing"):
        rollback(session, settings=settings)
    assert statuses(session) == {"v0002": "active", "v0001": "retired"}


# --- load_scorer -----------------------------------------------------------------------------------------


def test_load_scorer_loads_the_active_version(session, settings):
    assert load_scorer(session, settings=settings, loader=TinyModel.load) is None
    gate(session, settings, publish(session, settings, accuracy=0.5, seed=7))

    version, model = load_scorer(session, settings=settings, loader=TinyModel.load)

    assert version.name == "v0001"
    assert torch.equal(model.weight, torch.arange(4, dtype=torch.float32) + 7)


def test_load_scorer_holds_no_transaction_while_loading(engine, factory, settings):
    with factory() as session:
        gate(session, settings, publish(session, settings, accuracy=0.5, seed=3))
        session.commit()
    loads: list[Path] = []

    def slow_loader(path: Path, *, device: str) -> TinyModel:
        # A session inside a transaction holds a pooled connection (on SQLite: the write lock), so none may be out.
        assert engine.pool.checkedout() == 0, "load_scorer kept a transaction open during the load"
        with factory() as other:  # votes and other writes go on meanwhile
            other.add(Image(sha256=str(len(loads)) * 64, width=8, height=8, format="png", byte_size=10))
            other.commit()
        loads.append(path)
        return TinyModel.load(path, device=device)

    with factory() as session:
        version, model = load_scorer(session, settings=settings, loader=slow_loader)
        assert version in session and version.name == "v0001" and version.status == "active"
        assert torch.equal(model.weight, torch.arange(4, dtype=torch.float32) + 3)
        version.reason = "still usable in the caller's session"
        session.commit()
    with factory() as session:
        assert active_version(session).reason == "still usable in the caller's session"
        session.commit()
        assert load_scorer(session, settings=settings, loader=slow_loader)[0].name == "v0001"  # also after a commit
    assert len(loads) == 2


def test_load_scorer_refuses_corrupt_files(session, settings):
    version = publish(session, settings, accuracy=0.5)
    gate(session, settings, version)
    (version_dir(settings, version) / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(VersionFilesError, match=r"model\.safetensors does not match"):
        load_scorer(session, settings=settings, loader=TinyModel.load)


# --- scores ----------------------------------------------------------------------------------------------


def _candidates(session, count: int) -> list[int]:
    image = Image(sha256="0" * 64, width=8, height=8, format="png", byte_size=10)
    session.add(image)
    session.flush()
    task = Task(source_image_id=image.id, instruction="make it wood")
    session.add(task)
    session.flush()
    candidates = [Candidate(task_id=task.id, image_id=image.id, generator=f"g{i}") for i in range(count)]
    session.add_all(candidates)
    session.flush()
    return [candidate.id for candidate in candidates]


def test_record_scores_upserts_and_cached_scores_reads_back(session, settings):
    a, b, c = _candidates(session, 3)
    version = publish(session, settings)

    record_scores(session, version_id=version.id, scores={a: 0.5, b: -1.25})
    record_scores(session, version_id=version.id, scores={b: 2.0})
    session.commit()

    assert cached_scores(session, version_id=version.id, candidate_ids=[a, b, c]) == {a: 0.5, b: 2.0}
    assert cached_scores(session, version_id=version.id + 1, candidate_ids=[a]) == {}
    assert session.scalar(select(func.count()).select_from(Score)) == 2


def test_record_scores_refuses_bad_input(session, settings):
    (a,) = _candidates(session, 1)
    version = publish(session, settings)
    with pytest.raises(NotFound, match="No model version"):
        record_scores(session, version_id=999, scores={a: 1.0})
    with pytest.raises(NotFound, match=r"No candidates with ids \[999\]"):
        record_scores(session, version_id=version.id, scores={a: 1.0, 999: 1.0})
    with pytest.raises(InvalidInput, match="finite number"):
        record_scores(session, version_id=version.id, scores={a: float("inf")})
    assert cached_scores(session, version_id=version.id, candidate_ids=[a]) == {}
