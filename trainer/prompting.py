"""The one place where the model input for (source image, edited image, instruction[, rationale]) is built.

A sequence is the user turn (both images and the instruction) rendered by the processor's chat template up to and
including the generation prompt; the rationale, when given, is the assistant turn that follows. The reward is read at
the **score position**, the last prompt token: attention is causal, so nothing after it (a rationale, padding) can
change the score. Labels are -100 everywhere but on rationale tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import ProcessorMixin

from trainer.losses import IGNORE_INDEX

PROMPT_TEMPLATE = (
    "Source image, then the edited image. Instruction: {instruction}\nRate how well the edit follows the instruction."
)
# Pretraining's captioning prompt: no instruction, so the answer ("Mirrored it left to right.") needs the pixels.
CAPTION_PROMPT = "Source image, then the edited image.\nDescribe what was done to the source."
TEXT_KEYS = ("input_ids", "attention_mask")


@dataclass
class PromptExample:
    """One unbatched sequence: token ids, labels, the score position and the processor's image tensors."""

    input_ids: torch.Tensor  # (T,)
    labels: torch.Tensor  # (T,) -100 except rationale tokens
    score_index: int  # last prompt token; every rationale token comes after it
    token_extras: dict[str, torch.Tensor] = field(default_factory=dict)  # (T,) each, e.g. token_type_ids
    image_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # as the processor returns them

    @property
    def n_rationale_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


@dataclass
class Batch:
    """Right-padded sequences ready for `JointRewardModel.forward`."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T)
    score_index: torch.Tensor  # (B,)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # token extras (B, T) and image tensors

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on `device` (tensors already there are not copied)."""
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
            score_index=self.score_index.to(device),
            extras={k: v.to(device) for k, v in self.extras.items()},
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for the backbone's base model (no labels, no score index)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, **self.extras}


def user_messages(text: str) -> list[dict]:
    """The chat-format user turn: source image, edited image, then the prompt text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": text}]}]


def scoring_text(instruction: str) -> str:
    """The user turn's text for scoring an edit against `instruction`."""
    return PROMPT_TEMPLATE.format(instruction=instruction)


def render_prompt(processor: ProcessorMixin, text: str) -> tuple[str, bool]:
    """The prompt up to the generation prompt for user text `text`, and whether the chat template made it."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(user_messages(text), add_generation_prompt=True, tokenize=False), True
    image_token = getattr(processor, "image_token", "<image>")
    return f"{image_token}{image_token}\n{text}\nAnswer:", False


def rationale_continuation(processor: ProcessorMixin, text: str, rationale: str, prompt: str) -> str:
    """The text after `prompt` when the rationale is the assistant turn (its end-of-turn marker included)."""
    if getattr(processor, "chat_template", None):
        messages = user_messages(text) + [{"role": "assistant", "content": [{"type": "text", "text": rationale}]}]
        full = processor.apply_chat_template(messages, tokenize=False)
        if full.startswith(prompt):
            return full[len(prompt) :].rstrip()
    # Templates whose assistant turn does not extend the generation prompt (e.g. ones that inject thinking tags).
    eos = processor.tokenizer.eos_token or ""
    return f" {rationale}{eos}"


def build_example(
    processor: ProcessorMixin,
    *,
    source: Image.Image,
    edited: Image.Image,
    instruction: str,
    rationale: str | None = None,
    max_rationale_tokens: int = 128,
    caption: bool = False,
) -> PromptExample:
    """Encode one (source, edited, instruction) sequence, with the rationale as LM targets when given.

    `caption=True` builds pretraining's captioning sequence instead: the prompt leaves the instruction out
    (`CAPTION_PROMPT`), so its target, the rationale, can only be read from the pictures.
    """
    instruction = instruction.strip()
    if not instruction and not caption:
        raise ValueError("The instruction is empty; every sequence needs the edit instruction.")
    text = CAPTION_PROMPT if caption else scoring_text(instruction)
    prompt, templated = render_prompt(processor, text)
    encoded = processor(
        text=[prompt],
        images=[source.convert("RGB"), edited.convert("RGB")],
        return_tensors="pt",
        add_special_tokens=not templated,  # a chat template already holds BOS
    )
    prompt_ids = encoded["input_ids"][0]  # (P,)
    rationale_ids = torch.empty(0, dtype=prompt_ids.dtype)  # (R,)
    if rationale and rationale.strip():
        continuation = rationale_continuation(processor, text, rationale.strip(), prompt)
        ids = processor.tokenizer(continuation, add_special_tokens=False)["input_ids"][:max_rationale_tokens]
        rationale_ids = torch.tensor(ids, dtype=prompt_ids.dtype)
    n_prompt, n_rationale = prompt_ids.shape[0], rationale_ids.shape[0]
    labels = torch.cat([torch.full((n_prompt,), IGNORE_INDEX, dtype=torch.long), rationale_ids.long()])  # (T,)
    token_extras, image_inputs = _split_processor_outputs(encoded, n_prompt)
    token_extras = {k: F.pad(v, (0, n_rationale)) for k, v in token_extras.items()}  # rationale tokens are text
    return PromptExample(
        input_ids=torch.cat([prompt_ids, rationale_ids]),
        labels=labels,
        score_index=n_prompt - 1,
        token_extras=token_extras,
        image_inputs=image_inputs,
    )


def _split_processor_outputs(encoded, n_prompt: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Token-aligned extras (shape (1, P)) → (P,) each; everything else is an image tensor, kept as is."""
    token_extras, image_inputs = {}, {}
    for key, value in encoded.items():
        if key in TEXT_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"Processor output {key!r} is a {type(value).__name__}, expected a tensor.")
        if value.dim() == 2 and value.shape == (1, n_prompt):
            token_extras[key] = value[0]
        else:
            image_inputs[key] = value
    return token_extras, image_inputs


def pad_token_id(processor: ProcessorMixin) -> int:
    """The tokenizer's pad id (its EOS when it has none); padded positions are masked anyway."""
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token.")
    return int(pad)


def collate(examples: Sequence[PromptExample], processor: ProcessorMixin) -> Batch:
    """Right-pad examples into one batch; image tensors are concatenated along their leading dimension."""
    if not examples:
        raise ValueError("collate() needs at least one example.")
    length = max(ex.input_ids.shape[0] for ex in examples)
    pad_id = pad_token_id(processor)

    def pad_1d(t: torch.Tensor, value: int) -> torch.Tensor:
        return F.pad(t, (0, length - t.shape[0]), value=value)  # (T,)

    input_ids = torch.stack([pad_1d(ex.input_ids, pad_id) for ex in examples])  # (B, T)
    attention_mask = torch.stack([pad_1d(torch.ones_like(ex.input_ids), 0) for ex in examples])  # (B, T)
    labels = torch.stack([pad_1d(ex.labels, IGNORE_INDEX) for ex in examples])  # (B, T)
    extras = {k: torch.stack([pad_1d(ex.token_extras[k], 0) for ex in examples]) for k in examples[0].token_extras}
    for key in examples[0].image_inputs:
        extras[key] = _concat_padded([ex.image_inputs[key] for ex in examples])
    score_index = torch.tensor([ex.score_index for ex in examples], dtype=torch.long)  # (B,)
    return Batch(
        input_ids=input_ids, attention_mask=attention_mask, labels=labels, score_index=score_index, extras=extras
    )


def _concat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding the other dims to the largest (zero = padding for Idefics-style masks)."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pads = [p for d in reversed(range(1, t.dim())) for p in (0, shape[d - 1] - t.shape[d])]
        padded.append(F.pad(t, pads) if any(pads) else t)
    return torch.cat(padded, dim=0)
