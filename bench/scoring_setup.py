"""Inputs, models and the timed variants of `bench/scoring.py`: demo pairs, sized models, JRM / judge / prefill /
training-step calls."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import ProcessorMixin

from storage.demo_edits import demo_task
from storage.demo_votes import write_rationale
from trainer.backbones import Backbone, load_backbone
from trainer.losses import joint_loss
from trainer.model import JointRewardModel, JRMConfig
from trainer.prompting import Batch, build_example, collate

JUDGE_QUESTION = (
    "Source image, then edit A, then edit B. Instruction: {instruction}\n"
    "Which edit follows the instruction better? Explain, then answer A or B."
)
VERDICT_PROMPT = "\nVerdict:"
MIB = 2**20


@dataclass(frozen=True)
class PairInput:
    """One demo pair: source, two candidates, the instruction and a rationale for the left one."""

    source: Image.Image
    left: Image.Image
    right: Image.Image
    instruction: str
    rationale: str


def demo_pairs(n: int) -> list[PairInput]:
    """`n` pairs from the demo dataset (deterministic), the correct-vs-flawed rationale on the left."""
    pairs = []
    for index in range(n):
        task = demo_task(0, index)
        left, right = task.candidates[0], task.candidates[1]
        rng = random.Random(index)
        rationale = write_rationale(
            "left", noisy=False, left=left, right=right, instruction=task.instruction, source=task.source, rng=rng
        )
        pairs.append(PairInput(task.source, left.image, right.image, task.instruction, rationale))
    return pairs


# --- models ----------------------------------------------------------------------------------------------------


def build_model(backbone: str, hidden: int, layers: int, cache_dir: str | None) -> JointRewardModel:
    """The backbone as is (hidden = layers = 0), or a random copy with its language model resized."""
    base = load_backbone(backbone, cache_dir=cache_dir)
    if hidden or layers:
        config = copy.deepcopy(base.model.config)
        text = config.get_text_config()
        text.hidden_size = hidden or text.hidden_size
        text.intermediate_size = 2 * text.hidden_size
        text.num_hidden_layers = layers or text.num_hidden_layers
        text.num_attention_heads = text.num_key_value_heads = max(1, text.hidden_size // 64)
        text.head_dim = text.hidden_size // text.num_attention_heads  # set at init from the old sizes: recompute
        torch.manual_seed(0)
        name = f"{backbone}-h{text.hidden_size}-l{text.num_hidden_layers}"
        base = Backbone(type(base.model)(config), base.processor, name, base.image_size, base.is_tiny)
    torch.manual_seed(0)
    return JointRewardModel(base, JRMConfig(backbone=backbone)).eval()


def describe_size(model: JointRewardModel) -> str:
    """The language model's size as "hidden H, L layers"."""
    text = model.backbone.config.get_text_config()
    return f"hidden {text.hidden_size}, {text.num_hidden_layers} layers"


def lm_head_bytes(model: JointRewardModel) -> int:
    """Bytes of the LM head's parameters."""
    head = model.backbone.get_output_embeddings()
    return sum(p.numel() * p.element_size() for p in head.parameters())


def param_bytes(model: JointRewardModel) -> int:
    """Bytes of every parameter (backbone, LM head, reward head)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


# --- the variants ----------------------------------------------------------------------------------------------


def jrm_batch(processor: ProcessorMixin, pairs: list[PairInput], *, rationale: bool = False) -> Batch:
    """Left sequences (with the rationale when asked) then right ones: 2·len(pairs) pointwise sequences."""
    left = [
        build_example(
            processor,
            source=p.source,
            edited=p.left,
            instruction=p.instruction,
            rationale=p.rationale if rationale else None,
        )
        for p in pairs
    ]
    right = [build_example(processor, source=p.source, edited=p.right, instruction=p.instruction) for p in pairs]
    return collate(left + right, processor)


def judge_inputs(processor: ProcessorMixin, pairs: list[PairInput]) -> dict[str, torch.Tensor]:
    """One left-padded sequence per pair holding the source and both edits (the judge's pair prompt)."""
    texts = []
    for p in pairs:
        content = [{"type": "image"}] * 3 + [{"type": "text", "text": JUDGE_QUESTION.format(instruction=p.instruction)}]
        messages = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    images = [image for p in pairs for image in (p.source, p.left, p.right)]
    processor.tokenizer.padding_side = "left"
    encoded = processor(text=texts, images=images, padding=True, return_tensors="pt", add_special_tokens=False)
    return dict(encoded)


@torch.no_grad()
def judge(model: JointRewardModel, inputs: dict[str, torch.Tensor], n_tokens: int) -> torch.Tensor:
    """Generate exactly `n_tokens` rationale tokens, then read the verdict: +1 where " A" beats " B"."""
    backbone, tokenizer = model.backbone, model.processor.tokenizer
    out = backbone.generate(
        **inputs,
        min_new_tokens=n_tokens,
        max_new_tokens=n_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    rows = out.sequences.shape[0]
    verdict = tokenizer(VERDICT_PROMPT, add_special_tokens=False, return_tensors="pt").input_ids
    verdict = verdict.to(out.sequences.device).repeat(rows, 1)  # (B, k)
    # The cache holds every position but the last generated token's, which goes in with the verdict prompt.
    ids = torch.cat([out.sequences[:, -1:], verdict], dim=1)  # (B, 1 + k)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(out.sequences[:, inputs["input_ids"].shape[1] :])], 1)
    mask = torch.cat([mask, torch.ones_like(verdict)], dim=1)  # (B, T + N + k)
    logits = backbone(input_ids=ids, attention_mask=mask, past_key_values=out.past_key_values, logits_to_keep=1).logits
    a, b = (tokenizer(t, add_special_tokens=False).input_ids[0] for t in (" A", " B"))
    return torch.sign(logits[:, -1, a] - logits[:, -1, b])  # (B,)


@torch.no_grad()
def prefill(model: JointRewardModel, batch: Batch) -> torch.Tensor:
    """The physical floor: the base model's forward on the batch, last hidden state only."""
    return model.backbone.base_model(**batch.model_inputs(), use_cache=False, return_dict=True).last_hidden_state


def train_step(model: JointRewardModel, optimizer: torch.optim.Optimizer, batch: Batch, lm_weight: float) -> float:
    """One joint-loss step on chosen (first half) vs rejected (second half) sequences."""
    n = len(batch) // 2
    out = model(batch, with_lm=lm_weight > 0)
    loss = joint_loss(out.rewards[:n], out.rewards[n:], torch.zeros(n, dtype=torch.bool), out.lm_loss, lm_weight)
    loss.total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.total.item()


def inputs_to(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of `inputs` on `device`."""
    return {k: v.to(device) for k, v in inputs.items()}


def sync_device(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock timings cover it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
