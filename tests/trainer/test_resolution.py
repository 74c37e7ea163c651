"""A run's pixel budget for dynamic-resolution backbones: validated, applied, recorded, refused where it can't apply."""

from __future__ import annotations

import pytest

from storage.errors import InvalidInput
from tests.trainer.conftest import example
from trainer.model import JointRewardModel, JRMConfig
from trainer.prompting import collate
from trainer.resolution import pixel_budget
from trainer.run_params import parse_params


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_image_pixels": -1}, "max_image_pixels must be a whole number >= 0"),
        ({"min_image_pixels": 2.5}, "min_image_pixels must be a whole number >= 0"),
        ({"min_image_pixels": 4096, "max_image_pixels": 1024}, "is below min_image_pixels"),
    ],
)
def test_bad_budgets_are_refused_with_the_reason(fields, message):
    with pytest.raises(ValueError, match=message):
        JRMConfig(**fields)


def test_a_run_param_of_the_wrong_type_is_refused():
    with pytest.raises(InvalidInput, match="max_image_pixels must be a whole number"):
        parse_params({"max_image_pixels": "big"})
    assert parse_params({"max_image_pixels": 2048}).jrm.max_image_pixels == 2048


def test_a_fixed_size_backbone_refuses_a_budget(backbone_cache):
    with pytest.raises(ValueError, match="takes images at a fixed size"):
        JointRewardModel.from_config(JRMConfig(backbone="tiny", max_image_pixels=4096), cache_dir=backbone_cache)


def test_a_budget_too_small_for_one_merged_patch_is_refused(backbone_cache):
    with pytest.raises(ValueError, match="must be at least 256"):
        JointRewardModel.from_config(
            JRMConfig(backbone="tiny-qwen2-vl", max_image_pixels=100), cache_dir=backbone_cache
        )


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_the_budget_sets_the_image_token_count_and_travels_with_the_version(name, backbone_cache, tmp_path):
    default = JointRewardModel.from_config(JRMConfig(backbone=name), cache_dir=backbone_cache).eval()
    small = JointRewardModel.from_config(
        JRMConfig(backbone=name, max_image_pixels=32 * 32, min_image_pixels=16 * 16), cache_dir=backbone_cache
    ).eval()
    assert pixel_budget(small.processor) == (256, 1024) and pixel_budget(default.processor) != (256, 1024)
    # 80×96 and 64×64 pictures: fewer image tokens under the smaller budget.
    assert example(small, 0).input_ids.shape[0] < example(default, 0).input_ids.shape[0]
    small.save(tmp_path / "v")
    loaded = JointRewardModel.load(tmp_path / "v", cache_dir=backbone_cache)
    assert loaded.jrm_config.max_image_pixels == 1024 and pixel_budget(loaded.processor) == (256, 1024)
    batch = collate([example(small, i) for i in range(2)], small.processor)
    assert loaded.score(batch).tolist() == small.score(batch).tolist()
