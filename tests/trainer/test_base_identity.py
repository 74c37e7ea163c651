"""A LoRA version records its base (revision + file hashes); a load, the scorer loader and the registry refuse a
version whose base changed since it was trained."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from storage.db import transaction
from trainer.__main__ import CliError, _find_version, _load_model
from trainer.base_identity import base_folder, identity_files
from trainer.model import JointRewardModel, JRMConfig
from trainer.presets import preset_dir
from trainer.registry import load_scorer, publish_version
from trainer.scorer import load_scorer_model

LORA = JRMConfig(backbone="tiny", finetune="lora", lora_rank=2, lora_alpha=4, lora_target_modules=("q_proj",))


@pytest.fixture
def own_cache(settings, backbone_cache) -> Path:
    """The data folder's backbone cache holding a copy of the tiny preset that a test may change."""
    cache = settings.data_dir / "backbones"
    shutil.copytree(Path(backbone_cache) / "tiny", cache / "tiny")
    return cache


@pytest.fixture
def lora_version(tmp_path, own_cache) -> Path:
    """A LoRA version on the `tiny` preset in `own_cache`."""
    return JointRewardModel.from_config(LORA, cache_dir=own_cache).save(tmp_path / "v0007")


def change_weights(folder: Path) -> None:
    """Retrain the base, as far as its files can tell: one weight moves."""
    weights = folder / "model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if "embed_tokens" in k)
    state[key][0, 0] += 1.0
    save_file(state, weights, metadata={"format": "pt"})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------- refusing


def test_a_lora_version_refuses_a_base_whose_weights_changed(lora_version, own_cache, settings):
    before = sha256(own_cache / "tiny" / "model.safetensors")
    change_weights(own_cache / "tiny")
    after = sha256(own_cache / "tiny" / "model.safetensors")
    message = (
        rf"The LoRA version in {lora_version} was trained on base 'tiny' \(revision None\), but the base in "
        rf"{own_cache / 'tiny'} has different files: model\.safetensors: expected {before}, found {after}\. Restore "
        r"the base it was trained on .*, or train the version again on this base\."
    )
    with pytest.raises(ValueError, match=message):
        JointRewardModel.load(lora_version, cache_dir=own_cache)
    with pytest.raises(ValueError, match=message):
        load_scorer_model(lora_version, settings=settings, device="cpu")


def test_the_registry_refuses_to_serve_a_lora_version_whose_base_changed(factory, settings, own_cache):
    model = JointRewardModel.from_config(LORA, cache_dir=own_cache)
    with transaction(factory) as session:
        version = publish_version(session, save=model.save, settings=settings, backbone="tiny", config={}, metrics=None)
        version.status = "active"
    with factory() as session:
        assert load_scorer(session, settings=settings)[1].is_lora  # the base as trained: it serves
    (own_cache / "tiny" / "tokenizer.json").write_text("{}")  # a tokenizer of another build
    with factory() as session, pytest.raises(ValueError, match=r"v0001 was trained on base 'tiny'.*tokenizer\.json"):
        load_scorer(session, settings=settings)
    with factory() as session, pytest.raises(CliError, match=r"Cannot load model version v0001: The LoRA version"):
        _load_model(settings, _find_version(session, None))  # `python -m trainer score | evaluate` print it, no traceback


def test_a_lora_version_without_a_base_record_is_refused(lora_version, own_cache):
    meta = json.loads((lora_version / "jrm_config.json").read_text())
    del meta["base"]
    (lora_version / "jrm_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"does not record which files its base 'tiny' had.*train it again"):
        JointRewardModel.load(lora_version, cache_dir=own_cache)


def test_a_hub_base_that_is_not_in_the_cache_is_named_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"'org/absent' at revision abc123 is not in the local model cache.*download"):
        base_folder("org/absent", cache_dir=tmp_path, revision="abc123")


# ---------------------------------------------------------------------------------------------------- recording


def test_a_lora_version_records_its_base_files_and_loads_while_they_are_unchanged(lora_version, own_cache):
    base = json.loads((lora_version / "jrm_config.json").read_text())["base"]
    folder = own_cache / "tiny"
    assert base["name"] == "tiny" and base["revision"] is None
    assert {"model.safetensors", "config.json", "tokenizer.json", "processor_config.json"} <= set(base["files"])
    assert "jrm_tiny.json" not in base["files"] and "generation_config.json" not in base["files"]
    assert all(base["files"][name] == sha256(folder / name) for name in base["files"])
    assert JointRewardModel.load(lora_version, cache_dir=own_cache).is_lora


def test_the_base_of_each_kind_is_found_where_load_backbone_reads_it(own_cache, tmp_path):
    assert base_folder("tiny", cache_dir=own_cache) == own_cache / "tiny"
    assert base_folder("tiny-edit", cache_dir=own_cache) == preset_dir("tiny-edit")
    assert base_folder(str(own_cache / "tiny"), cache_dir=None) == own_cache / "tiny"
    shipped = identity_files(preset_dir("tiny-edit"))
    assert "model.safetensors" in shipped and "jrm_edit_view.json" in shipped  # the edit view changes the inputs
    assert "reward_head.safetensors" not in shipped and "jrm_preset.json" not in shipped  # the version has its own


def test_a_full_version_needs_no_base_record(make_model, tmp_path):
    model = make_model("tiny")
    model.save(tmp_path / "full")
    assert "base" not in json.loads((tmp_path / "full" / "jrm_config.json").read_text())
    assert torch.equal(JointRewardModel.load(tmp_path / "full").reward_head[0].weight, model.reward_head[0].weight)
