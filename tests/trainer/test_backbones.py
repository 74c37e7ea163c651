"""Tiny presets: offline, deterministic, and loaded through the generic from_pretrained path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, Idefics3ForConditionalGeneration, LlavaForConditionalGeneration

from trainer.backbones import (
    IMAGE_TOKEN,
    TINY_CHAT_TEMPLATE,
    build_tiny_idefics3,
    build_tiny_llava,
    ensure_tiny_preset,
    load_backbone,
    train_tiny_tokenizer,
)


def test_tokenizer_is_deterministic_byte_level_bpe():
    first, second = train_tiny_tokenizer(seed=0), train_tiny_tokenizer(seed=0)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert 2000 <= len(first) <= 4000
    assert {first.pad_token, first.bos_token, first.eos_token} == {"<pad>", "<s>", "</s>"}
    assert first.convert_tokens_to_ids(IMAGE_TOKEN) != first.unk_token_id
    text = "Make the sky purple. B kept the background but ignored 'make it wood' — ünïcode ok."
    assert first.decode(first(text)["input_ids"]) == text  # byte level: any text round-trips
    assert len(first(" the edited image")["input_ids"]) == 3  # the corpus taught it common words


def test_tiny_llava_round_trips_through_from_pretrained(backbone_cache):
    loaded = load_backbone("tiny", cache_dir=backbone_cache)
    assert isinstance(loaded.model, LlavaForConditionalGeneration)
    assert (loaded.name, loaded.image_size, loaded.is_tiny) == ("tiny", 112, True)
    fresh, _ = build_tiny_llava(seed=0)  # the same seed builds the same weights
    for (name, saved), (_, built) in zip(loaded.model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(saved, built), name
    assert loaded.processor.chat_template == TINY_CHAT_TEMPLATE
    assert type(loaded.processor.image_processor).__name__ == "CLIPImageProcessorPil"  # no torchvision needed


def test_tiny_idefics3_round_trips_through_from_pretrained(backbone_cache):
    loaded = load_backbone("tiny-idefics3", cache_dir=backbone_cache)
    assert isinstance(loaded.model, Idefics3ForConditionalGeneration)
    assert loaded.image_size == 64
    fresh, processor = build_tiny_idefics3(seed=0)
    assert torch.equal(loaded.model.lm_head.weight, fresh.lm_head.weight)
    assert len(loaded.processor.tokenizer) == len(processor.tokenizer) == loaded.model.config.text_config.vocab_size


def test_cached_preset_is_not_rebuilt(backbone_cache):
    path = ensure_tiny_preset("tiny", backbone_cache)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_preset("tiny", backbone_cache) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_stale_cache_is_rebuilt(tmp_path):
    path = ensure_tiny_preset("tiny-idefics3", tmp_path)
    (path / "jrm_tiny.json").write_text('{"format": 0}')
    assert ensure_tiny_preset("tiny-idefics3", tmp_path) == path
    assert load_backbone("tiny-idefics3", cache_dir=tmp_path).is_tiny
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-idefics3"]  # no staging or stale folders left


def test_different_seed_gives_different_weights():
    a, _ = build_tiny_llava(seed=0)
    b, _ = build_tiny_llava(seed=1)
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)


def test_unknown_backbone_gives_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Could not load backbone"):
        load_backbone(str(tmp_path / "missing-model"))
    with pytest.raises(ValueError, match="Unknown tiny preset"):
        ensure_tiny_preset("huge", tmp_path)


@pytest.mark.parametrize(
    ("name", "stock"), [("tiny-qwen2-vl", "Qwen2VLProcessor"), ("tiny-smolvlm", "SmolVLMProcessor")]
)
def test_a_folder_naming_the_stock_processor_loads_with_the_image_only_one(name, stock, backbone_cache, tmp_path):
    """Real Qwen2-VL / SmolVLM checkpoints name their stock processor, whose video slot needs torchvision."""
    folder = tmp_path / name
    shutil.copytree(Path(backbone_cache) / name, folder)
    config_file = folder / "processor_config.json"
    config = json.loads(config_file.read_text())
    config["processor_class"] = stock
    config_file.write_text(json.dumps(config))
    with pytest.raises(OSError, match="video processor"):  # what AutoProcessor does with it here
        AutoProcessor.from_pretrained(folder)
    loaded = load_backbone(str(folder))
    assert type(loaded.processor).__name__ == f"ImageOnly{stock}" and not loaded.is_tiny
    assert loaded.processor.chat_template == load_backbone(name, cache_dir=backbone_cache).processor.chat_template
