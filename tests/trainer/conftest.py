"""Trainer fixtures: one thread, no network, tiny backbones built once per session into a temp cache."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: tests never touch the network

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from trainer.backbones import ensure_tiny_preset  # noqa: E402
from trainer.model import JointRewardModel, JRMConfig  # noqa: E402
from trainer.prompting import PromptExample, build_example  # noqa: E402

torch.set_num_threads(1)

ARCHITECTURES = ["tiny", "tiny-idefics3", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-smolvlm"]


@pytest.fixture(scope="session")
def backbone_cache(tmp_path_factory) -> str:
    """A cache folder holding both tiny presets, built once for the whole session."""
    cache = tmp_path_factory.mktemp("backbones")
    for name in ARCHITECTURES:
        ensure_tiny_preset(name, cache)
    return str(cache)


@pytest.fixture(scope="session")
def _base_models(backbone_cache) -> dict[str, JointRewardModel]:
    models = {}
    for name in ARCHITECTURES:
        torch.manual_seed(0)
        models[name] = JointRewardModel.from_config(JRMConfig(backbone=name), cache_dir=backbone_cache).eval()
    return models


@pytest.fixture
def make_model(_base_models):
    """`make_model(name)`: a fresh copy of a session-loaded JRM (full fine-tuning, eval mode)."""

    def make(name: str = "tiny") -> JointRewardModel:
        return copy.deepcopy(_base_models[name])

    return make


def picture(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A small deterministic PIL drawing (background colour + a shape)."""
    image = Image.new("RGB", size, ((seed * 53) % 256, (seed * 97) % 256, (seed * 29) % 256))
    draw = ImageDraw.Draw(image)
    draw.ellipse((10 + seed % 20, 10, 60, 50 + seed % 20), fill=((seed * 13) % 256, 200, 40))
    return image


def example(
    model: JointRewardModel,
    seed: int,
    *,
    instruction: str = "make the ball red",
    rationale: str | None = None,
    max_rationale_tokens: int = 128,
    edited_size: tuple[int, int] = (80, 96),
) -> PromptExample:
    """One encoded sequence built from generated pictures."""
    return build_example(
        model.processor,
        source=picture(seed),
        edited=picture(seed + 100, edited_size),
        instruction=instruction,
        rationale=rationale,
        max_rationale_tokens=max_rationale_tokens,
    )
