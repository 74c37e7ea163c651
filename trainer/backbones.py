"""Vision-language backbones: any `AutoModelForImageTextToText` checkpoint, or a built-in offline preset.

`tiny-edit` (the default) is a tiny LLaVA pretrained by the project on generated edits and shipped in
trainer/presets/tiny-edit with its reward head (trainer/pretrain, docs/training.md). The random-init tiny presets
("tiny": LLaVA, "tiny-idefics3": Idefics3, and the real families' layouts in trainer/families.py:
"tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-smolvlm") have a byte-level BPE tokenizer trained on a generated corpus;
they are built once per seed, saved with `save_pretrained`, and then loaded through the same `from_pretrained`
path as a downloaded checkpoint, so tests exercise real code; they stay for fast tests and ablations. Their
tokenizer and its corpus live in `trainer.tiny_tokenizer`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from trainer.edit_view import wrap_if_marked
from trainer.families import FAMILY_PRESETS, load_processor  # registers the image-only Qwen2-VL / SmolVLM processors
from trainer.presets import PRESET_NAME, REWARD_HEAD_FILE, check_preset, preset_dir
from trainer.tiny_tokenizer import (  # re-exported: importers of trainer.backbones use these names
    IDEFICS3_TOKENS,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    TINY_CHAT_TEMPLATE,
    TINY_SEED,
    TINY_VOCAB_SIZE,
    tiny_corpus,
    train_tiny_tokenizer,
)

__all__ = [
    "IDEFICS3_TOKENS",
    "IMAGE_TOKEN",
    "SHIPPED_PRESETS",
    "SPECIAL_TOKENS",
    "TINY_CHAT_TEMPLATE",
    "TINY_FORMAT",
    "TINY_PRESETS",
    "TINY_SEED",
    "TINY_VOCAB_SIZE",
    "Backbone",
    "build_tiny_idefics3",
    "build_tiny_llava",
    "default_cache_dir",
    "ensure_tiny_preset",
    "load_backbone",
    "preset_folder",
    "preset_names",
    "tiny_corpus",
    "train_tiny_tokenizer",
]

TINY_FORMAT = 1  # bump when a preset's architecture or tokenizer changes, so stale caches are rebuilt


@dataclass
class Backbone:
    """A loaded image-text-to-text model with its processor."""

    model: PreTrainedModel
    processor: ProcessorMixin
    name: str
    image_size: int
    is_tiny: bool
    reward_head: Path | None = None  # a shipped preset's pretrained reward head (safetensors), if it has one


# --------------------------------------------------------------------------------------------------------------
# The tiny presets' models
# --------------------------------------------------------------------------------------------------------------


def _tiny_text_config(tokenizer: PreTrainedTokenizerFast, layers: int = 2) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_llava(
    seed: int = TINY_SEED,
    *,
    image_size: int = 112,
    patch_size: int = 16,
    vision_layers: int = 2,
    text_layers: int = 2,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random-init LLaVA (CLIP vision 112 px / patch 16 + 2-layer Llama) and its processor.

    The keywords build variants of the preset: for experiments (bench/learnability.py) and for the pretrained
    `tiny-edit` (trainer/pretrain); the `tiny` preset itself is always built with the defaults.
    """
    tokenizer = tokenizer or train_tiny_tokenizer(seed)
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=64,
    )
    # vision_feature_layer=-1: the last vision layer is used (with -2 it would hold weights that never train).
    config = LlavaConfig(
        vision_config=vision,
        text_config=_tiny_text_config(tokenizer, text_layers),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    return model, processor


def build_tiny_idefics3(seed: int = TINY_SEED) -> tuple[Idefics3ForConditionalGeneration, Idefics3Processor]:
    """A random-init Idefics3 (SigLIP-style vision 64 px / patch 16, pixel shuffle ×2 + 2-layer Llama)."""
    tokenizer = train_tiny_tokenizer(seed)
    tokenizer.add_special_tokens({"additional_special_tokens": IDEFICS3_TOKENS})
    vision = Idefics3VisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=_tiny_text_config(tokenizer),
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    # No image splitting: one 64 px tile per image → (64/16)² / 2² = 4 image tokens. No torchvision needed.
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 64}, do_image_splitting=False
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=TINY_CHAT_TEMPLATE
    )
    return model, processor


TINY_PRESETS: dict[str, Callable[[int], tuple[PreTrainedModel, ProcessorMixin]]] = {
    "tiny": build_tiny_llava,
    "tiny-idefics3": build_tiny_idefics3,
    **FAMILY_PRESETS,  # tiny-qwen2-vl, tiny-qwen2.5-vl, tiny-smolvlm (trainer/families.py)
}
# Pretrained by the project (`python -m trainer pretrain`) and shipped in trainer/presets/<name>.
SHIPPED_PRESETS = (PRESET_NAME,)


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """`<JRM data dir>/backbones`, where tiny presets are built once."""
    from storage.settings import load_settings

    return load_settings().data_dir / "backbones"


def ensure_tiny_preset(name: str, cache_dir: str | Path | None = None, *, seed: int = TINY_SEED) -> Path:
    """Build the tiny preset `name` into `<cache_dir>/<name>` unless an up-to-date copy is there; return its path."""
    if name not in TINY_PRESETS:
        raise ValueError(f"Unknown tiny preset {name!r}; choose one of {sorted(TINY_PRESETS)}.")
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = target / name
    corpus_sha = hashlib.sha256("\n".join(tiny_corpus(seed)).encode()).hexdigest()[:16]  # corpus edits rebuild too
    marker = {"preset": name, "seed": seed, "format": TINY_FORMAT, "corpus": corpus_sha}
    if _read_marker(target) == marker:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model, processor = TINY_PRESETS[name](seed)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "jrm_tiny.json").write_text(json.dumps(marker))
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / "jrm_tiny.json").read_text())
    except (OSError, ValueError):
        return None


def _publish(staging: Path, target: Path) -> None:
    """Move a finished build into place; a concurrent builder that won the race is kept."""
    stale = target.with_name(f".{target.name}-stale-{os.getpid()}")
    if target.exists():
        target.rename(stale)
    try:
        staging.rename(target)
    except OSError:
        if _read_marker(target) is None:
            raise
    shutil.rmtree(stale, ignore_errors=True)


def preset_folder(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """The folder of preset `name`: a shipped one's in trainer/presets, a random-init one's built into `cache_dir`;
    None when `name` is not a preset (a local folder or a hub id)."""
    if name in SHIPPED_PRESETS:
        return preset_dir(name)
    if name in TINY_PRESETS:
        return ensure_tiny_preset(name, cache_dir)
    return None


def load_backbone(
    name_or_path: str = PRESET_NAME, *, cache_dir: str | Path | None = None, dtype: torch.dtype | None = None
) -> Backbone:
    """Load an image-text-to-text model and its processor: a preset name, a hub id or a local folder.

    Presets are the random-init tiny ones (built into `cache_dir` on first use) and the shipped pretrained ones
    (`trainer/presets/<name>`, checked against their manifest first).
    """
    folder = preset_folder(name_or_path, cache_dir)
    is_tiny, head = folder is not None, None
    if name_or_path in SHIPPED_PRESETS:
        check_preset(folder)
        head = folder / REWARD_HEAD_FILE
    if folder is not None:
        source, hub_cache = str(folder), None
    else:
        source, hub_cache = name_or_path, (str(cache_dir) if cache_dir is not None else None)
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, cache_dir=hub_cache, dtype=dtype)
        processor = wrap_if_marked(load_processor(source, cache_dir=hub_cache), source)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"Could not load backbone {name_or_path!r} as an image-text-to-text model ({exc}). Use a tiny preset "
            f"({', '.join(preset_names())}), a local folder saved with save_pretrained, or a hub id that is "
            "already in the cache (this machine may be offline)."
        ) from exc
    return Backbone(
        model=model,
        processor=processor,
        name=name_or_path,
        image_size=image_size_of(model),
        is_tiny=is_tiny,
        reward_head=_pretrained_head(head if head is not None else Path(source)),
    )


def _pretrained_head(path: Path) -> Path | None:
    """A preset folder's pretrained reward head (a folder `trainer pretrain` wrote), if there is one."""
    head = path if path.name == REWARD_HEAD_FILE else path / REWARD_HEAD_FILE
    return head if head.is_file() else None


def preset_names() -> list[str]:
    """Every backbone name that needs no download: the shipped pretrained presets and the random-init ones."""
    return [*SHIPPED_PRESETS, *TINY_PRESETS]


def image_size_of(model: PreTrainedModel) -> int:
    """The vision tower's input side in pixels (0 when the config does not say)."""
    vision = getattr(model.config, "vision_config", None)
    size = getattr(vision, "image_size", 0) if vision is not None else 0
    return int(size if isinstance(size, int) else max(size))
