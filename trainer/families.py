"""Tiny offline builds of real VLM families: Qwen2-VL, Qwen2.5-VL and SmolVLM, random init.

They exist so every family-specific path (Qwen's dynamic resolution with `image_grid_thw` and M-RoPE, SmolVLM's
pixel shuffle and `<fake_token_around_image>` wrappers, each family's chat template) runs in tests on this machine
with nothing downloaded. Each build is the family's own `*ForConditionalGeneration` class from a small config, a
tokenizer trained like the other tiny presets' (`trainer.tiny_tokenizer`) plus the family's special tokens, and the
family's image processor.

The stock Qwen2-VL / SmolVLM processors declare a video processor, which needs torchvision (kept out: see
docs/backbones.md). `ImageOnlyQwen2VLProcessor` and `ImageOnlySmolVLMProcessor` are the same processors without
that slot; they are registered with `AutoProcessor`, so `AutoProcessor.from_pretrained` on a saved build (or on a
real checkpoint, when its processor config names them) returns them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
)

from trainer.tiny_tokenizer import IMAGE_TOKEN, TINY_SEED, train_tiny_tokenizer

# --------------------------------------------------------------------------------------------------------------
# Image-only processors (no video slot, so no torchvision)
# --------------------------------------------------------------------------------------------------------------


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images only: the same text and image handling, no video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class ImageOnlySmolVLMProcessor(SmolVLMProcessor):
    """`SmolVLMProcessor` for images only."""

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template=None, **kwargs):
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = "<video>"
        self.do_image_splitting = image_processor.do_image_splitting
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    # SmolVLM's own override only adds video frame sampling (it reads the video processor).
    apply_chat_template = ProcessorMixin.apply_chat_template


AutoProcessor.register(Qwen2VLConfig, ImageOnlyQwen2VLProcessor, exist_ok=True)
AutoProcessor.register(Qwen2_5_VLConfig, ImageOnlyQwen2VLProcessor, exist_ok=True)
AutoProcessor.register(SmolVLMConfig, ImageOnlySmolVLMProcessor, exist_ok=True)

# A real checkpoint's processor config names the stock class ("Qwen2VLProcessor"), whose video slot fails to load
# here; for these model types the image-only class is loaded instead (it reads the same files).
IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": ImageOnlyQwen2VLProcessor,
    "qwen2_5_vl": ImageOnlyQwen2VLProcessor,
    "smolvlm": ImageOnlySmolVLMProcessor,
}


def load_processor(source: str, *, cache_dir: str | None = None) -> ProcessorMixin:
    """`AutoProcessor.from_pretrained(source)`, or the image-only processor for the families that need one."""
    model_type = AutoConfig.from_pretrained(source, cache_dir=cache_dir).model_type
    loader = IMAGE_ONLY_PROCESSORS.get(model_type, AutoProcessor)
    return loader.from_pretrained(source, cache_dir=cache_dir)


# --------------------------------------------------------------------------------------------------------------
# Tokenizers and chat templates
# --------------------------------------------------------------------------------------------------------------

QWEN_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SMOLVLM_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]

# The families' own chat templates, cut to what the project renders (text and image items).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% elif item['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _family_tokenizer(seed: int, tokens: list[str], **special: str) -> PreTrainedTokenizerFast:
    """The tiny presets' BPE plus a family's special tokens; `special` names some of them (eos_token=...)."""
    tokenizer = train_tiny_tokenizer(seed)
    tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    for name, token in special.items():
        setattr(tokenizer, name, token)
    return tokenizer


# --------------------------------------------------------------------------------------------------------------
# Builds
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilySize:
    """Widths and depths of a family build; the defaults are the tiny presets' (bench/gpu_smoke.py scales up)."""

    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    patch_size: int = 8

    def mrope_section(self) -> list[int]:
        """Qwen's M-RoPE split of head_dim / 2 into (time, height, width) frequency bands."""
        half = self.text_hidden // self.text_heads // 2
        return [half - 2 * (half // 3), half // 3, half // 3]


TINY_SIZE = FamilySize()
# Pixels per image for the tiny Qwen builds: 64×64 = 8×8 patches of 8 px, merged 2×2 → 16 tokens per image.
TINY_MIN_PIXELS = 32 * 32
TINY_MAX_PIXELS = 64 * 64


def _text_config(tokenizer: PreTrainedTokenizerFast, size: FamilySize, **family: object) -> dict:
    """The decoder's config of a build: the size's widths, the tokenizer's ids, and the family's own keys."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": size.text_hidden,
        "intermediate_size": size.text_intermediate,
        "num_hidden_layers": size.text_layers,
        "num_attention_heads": size.text_heads,
        "num_key_value_heads": size.text_kv_heads,
        "max_position_embeddings": 4096,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **family,
    }


def _qwen_text(tokenizer: PreTrainedTokenizerFast, size: FamilySize) -> dict:
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": size.mrope_section()}
    return _text_config(tokenizer, size, rope_parameters=rope)


def _qwen_ids(tokenizer: PreTrainedTokenizerFast) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _qwen_processor(tokenizer: PreTrainedTokenizerFast, size: FamilySize) -> ImageOnlyQwen2VLProcessor:
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=size.patch_size,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS},
    )
    return ImageOnlyQwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )


def _qwen2_vision(size: FamilySize) -> dict:
    return {
        "depth": size.vision_layers,
        "embed_dim": size.vision_hidden,
        "hidden_size": size.text_hidden,  # the merger projects into the decoder's width
        "num_heads": size.vision_heads,
        "mlp_ratio": 2,
        "patch_size": size.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }


def _qwen2_5_vision(size: FamilySize) -> dict:
    return {
        "depth": size.vision_layers,
        "hidden_size": size.vision_hidden,
        "intermediate_size": 2 * size.vision_hidden,
        "num_heads": size.vision_heads,
        "out_hidden_size": size.text_hidden,
        "patch_size": size.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 4 * size.patch_size,
        "fullatt_block_indexes": [size.vision_layers - 1],
    }


def _build_qwen(config_class, model_class, vision: dict, seed: int, size: FamilySize):
    tokenizer = _family_tokenizer(seed, QWEN_TOKENS, eos_token="<|im_end|>", image_token="<|image_pad|>")
    config = config_class(text_config=_qwen_text(tokenizer, size), vision_config=vision, **_qwen_ids(tokenizer))
    torch.manual_seed(seed)
    return model_class(config), _qwen_processor(tokenizer, size)


def build_tiny_qwen2_vl(
    seed: int = TINY_SEED, *, size: FamilySize = TINY_SIZE
) -> tuple[Qwen2VLForConditionalGeneration, ImageOnlyQwen2VLProcessor]:
    """A random-init Qwen2-VL: ViT with 2-D RoPE and 2×2 patch merging, dynamic resolution, M-RoPE decoder."""
    return _build_qwen(Qwen2VLConfig, Qwen2VLForConditionalGeneration, _qwen2_vision(size), seed, size)


def build_tiny_qwen2_5_vl(
    seed: int = TINY_SEED, *, size: FamilySize = TINY_SIZE
) -> tuple[Qwen2_5_VLForConditionalGeneration, ImageOnlyQwen2VLProcessor]:
    """A random-init Qwen2.5-VL: Qwen2-VL's layout with window attention and SwiGLU in the vision tower."""
    return _build_qwen(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, _qwen2_5_vision(size), seed, size)


def build_tiny_smolvlm(
    seed: int = TINY_SEED, *, size: FamilySize = TINY_SIZE
) -> tuple[SmolVLMForConditionalGeneration, ImageOnlySmolVLMProcessor]:
    """A random-init SmolVLM: SigLIP-style vision 64 px / patch 16, pixel shuffle ×2, Llama-style decoder."""
    tokenizer = _family_tokenizer(seed, SMOLVLM_TOKENS, eos_token="<end_of_utterance>")
    text = _text_config(tokenizer, size, tie_word_embeddings=False)
    vision = {
        "hidden_size": size.vision_hidden,
        "intermediate_size": 2 * size.vision_hidden,
        "num_hidden_layers": size.vision_layers,
        "num_attention_heads": size.vision_heads,
        "image_size": 64,
        "patch_size": 16,
    }
    config = SmolVLMConfig(
        text_config=text,
        vision_config=vision,
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config)
    # One 64 px tile per image (no splitting): (64 / 16)² / 2² = 4 image tokens.
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 64}, do_image_splitting=False
    )
    processor = ImageOnlySmolVLMProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=SMOLVLM_CHAT_TEMPLATE
    )
    return model, processor


FAMILY_PRESETS = {
    "tiny-qwen2-vl": build_tiny_qwen2_vl,
    "tiny-qwen2.5-vl": build_tiny_qwen2_5_vl,
    "tiny-smolvlm": build_tiny_smolvlm,
}
