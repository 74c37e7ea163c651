"""`python -m trainer train | evaluate | score` as a person (or the worker) runs them: subprocesses on SQLite."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from storage.db import session_factory, transaction
from storage.models import ModelVersion, TrainingRun
from tests.conftest import make_test_engine
from tests.trainer.conftest import picture
from tests.trainer.test_pipeline import build_store, link_backbones
from trainer.evaluate import score_images
from trainer.model import JointRewardModel
from trainer.registry import promote_version
from trainer.registry.files import version_dir

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--max-steps", "2", "--batch-size", "2"]


@pytest.fixture
def runner(settings, backbone_cache, tmp_path):
    """A runner for the CLI against an empty SQLite store in `settings.data_dir`; `.factory` opens it."""
    engine, teardown = make_test_engine("sqlite", settings)
    link_backbones(settings, backbone_cache)
    env = {
        **os.environ,
        "JRM_DATA_DIR": str(settings.data_dir),
        "JRM_TORCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("JRM_DATABASE_URL", None)

    def run(*args: str, launcher: list[str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        command = (launcher or [sys.executable, "-m", "trainer"]) + list(args)
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    run.factory, run.settings = session_factory(engine), settings
    yield run
    teardown()


@pytest.fixture
def cli(runner, settings):
    """`runner` on a store holding 12 demo tasks (≈ 75 votes)."""
    build_store(runner.factory, settings, tasks=12)
    return runner


def _images(tmp_path) -> tuple[str, str]:
    source, edited = tmp_path / "source.png", tmp_path / "edited.png"
    picture(1).save(source)
    picture(2).save(edited)
    return str(source), str(edited)


def _last_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


@pytest.mark.slow
def test_train_then_score_and_evaluate(cli, tmp_path):
    source, edited = _images(tmp_path)
    before = cli("score", source, edited, "--instruction", "make the ball red")
    assert before.returncode == 2 and "No active model version yet" in before.stderr

    trained = cli("train", *FAST, "--lm-weight", "0.5", "--seed", "3")
    assert trained.returncode == 0, trained.stderr
    summary = _last_json(trained.stdout)
    # The first version goes through the gate: 12 demo tasks hold out too few to judge. The printed reason is the
    # gate's, as on the version's row.
    assert summary["version"] == "v0001" and summary["status"] == "rejected"
    assert summary["reason"].startswith("too few held-out votes to judge (") and "promote by hand" in summary["reason"]
    assert summary["gate"]["reason"] == summary["reason"] and summary["gate"]["promoted"] is False
    with cli.factory() as session:
        run = session.get(TrainingRun, summary["run_id"])
        assert run.trigger == "cli" and run.status == "succeeded"
        assert run.params == {"max_steps": 2, "batch_size": 2, "lm_weight": 0.5, "seed": 3}
        assert session.scalars(select(ModelVersion)).one().reason == summary["reason"]
    still = cli("score", source, edited, "--instruction", "make the ball red")
    assert still.returncode == 2 and "No active model version yet" in still.stderr
    with transaction(cli.factory) as session:  # a researcher overrides the gate
        promote_version(session, version_id=1, reason="cli test", settings=cli.settings)

    scored = cli("score", source, edited, "--instruction", "make the ball red")
    assert scored.returncode == 0, scored.stderr
    result = _last_json(scored.stdout)
    assert result["version"] == "v0001" and isinstance(result["score"], float)
    again = cli("score", source, edited, "--instruction", "make the ball red", "--version", "v0001")
    assert _last_json(again.stdout)["score"] == result["score"]

    evaluated = cli("evaluate")
    assert evaluated.returncode == 0, evaluated.stderr
    report = _last_json(evaluated.stdout)
    assert report["version"] == "v0001" and report["source"] == "heldout"
    assert report["heldout_accuracy"] == summary["heldout_accuracy"]  # the same split and the same forward


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--lm-weight", "-1"], "lm_weight must be >= 0"),
        (["train", "--run-id", "1", "--epochs", "2"], "drop the other options"),
        (["train", "--run-id", "99"], "No training run with id 99"),
        (["score", "missing.png", "missing.png", "--instruction", "x"], "no such file"),
        (["evaluate", "--version", "v0042"], "No model version 'v0042'"),
        (["evaluate", "--editreward-json", "x.json"], "go together"),
        (["pretrain", "--out", "preset", "--swap-share", "2"], "swap_share must be a number in [0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runner, args, message):
    result = runner(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(cli):
    """`accelerate launch --num_processes 2 --cpu` (gloo): both train, only rank 0 writes the run and the version."""
    with socket.socket() as probe:  # a free port: other test sessions may be launching on the default one
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--cpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        "--main_process_port",
        port,
        "--dynamo_backend",
        "no",
        "-m",
        "trainer",
    ]
    result = cli("train", *FAST, "--lm-weight", "0.5", launcher=launcher, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count('"version": "v0001"') == 1  # one summary: rank 0's
    with cli.factory() as session:
        assert session.scalar(select(func.count()).select_from(TrainingRun)) == 1
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1
        run = session.scalars(select(TrainingRun)).one()
    assert run.status == "succeeded" and run.step == run.total_steps == 2 and run.progress == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-smolvlm"])
def test_each_family_trains_full_and_lora_publishes_and_scores_through_the_cli(cli, tmp_path, family):
    """A real family's layout end to end: train (full, then LoRA), publish, load as a scorer, `trainer score`."""
    source, edited = _images(tmp_path)
    for version_id, finetune in enumerate(("full", "lora"), start=1):
        trained = cli("train", *FAST, "--backbone", family, "--finetune", finetune, "--no-promote")
        assert trained.returncode == 0, trained.stderr
        summary = _last_json(trained.stdout)
        assert summary["version"] == f"v{version_id:04d}"
        with transaction(cli.factory) as session:
            promote_version(session, version_id=version_id, reason="family test", settings=cli.settings)
        scored = cli("score", source, edited, "--instruction", "make the ball red")
        assert scored.returncode == 0, scored.stderr
        result = _last_json(scored.stdout)
        assert result["version"] == summary["version"]
        # The scorer the CLI loads (no LM head) scores exactly as the full saved model does in this process.
        with cli.factory() as session:
            row = session.get(ModelVersion, version_id)
            model = JointRewardModel.load(version_dir(cli.settings, row), cache_dir=cli.settings.data_dir / "backbones")
        assert model.jrm_config.backbone == family and model.is_lora == (finetune == "lora")
        [expected] = score_images(
            model, source=Image.open(source), instruction="make the ball red", edited=[Image.open(edited)]
        )
        assert result["score"] == pytest.approx(expected, abs=1e-5)


def test_train_flags_become_run_params():
    from trainer.__main__ import build_parser, train_params

    args = build_parser().parse_args(
        ["train", "--backbone", "tiny-qwen2-vl", "--finetune", "lora", "--max-image-pixels", "2048"]
        + ["--mixed-precision", "bf16", "--lr", "3e-4"]
    )
    assert train_params(args) == {
        "backbone": "tiny-qwen2-vl",
        "finetune": "lora",
        "max_image_pixels": 2048,
        "mixed_precision": "bf16",
        "lr": 3e-4,
    }
    assert train_params(build_parser().parse_args(["train"])) == {}  # nothing given: the configs' defaults
