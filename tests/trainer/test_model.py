"""The one forward: prompt building, training steps, scoring without the LM head, causality, save/load, LoRA.

Loading a version for scoring (no LM head, serving dtype) is tested in test_scorer.py; LoRA base identity in
test_base_identity.py.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.conftest import ARCHITECTURES, example
from trainer.losses import IGNORE_INDEX, joint_loss
from trainer.model import REWARD_HEAD_NAME, JointRewardModel, JRMConfig, apply_lora
from trainer.prompting import collate, render_prompt, scoring_text, user_messages

RATIONALE = "A made the ball red but B also changed the background."

# LLaVA reads the vision tower's pre-norm hidden states, so its final vision layer norm never gets a gradient.
UNUSED_BY_ARCHITECTURE = {
    "tiny": {"backbone.model.vision_tower.post_layernorm.weight", "backbone.model.vision_tower.post_layernorm.bias"},
    "tiny-idefics3": set(),
    "tiny-qwen2-vl": set(),
    "tiny-qwen2.5-vl": set(),
    "tiny-smolvlm": set(),
}


def pair_batch(model: JointRewardModel, n_pairs: int = 4):
    """Chosen sequences (rationale on every other one) then rejected ones, as one batch, plus tie flags."""
    chosen = [example(model, i, rationale=RATIONALE if i % 2 == 0 else None) for i in range(n_pairs)]
    rejected = [example(model, 50 + i, instruction="make the ball red please") for i in range(n_pairs)]
    is_tie = torch.tensor([i == n_pairs - 1 for i in range(n_pairs)])  # one tie vote, never dropped
    return collate(chosen + rejected, model.processor), is_tie


def train_steps(model: JointRewardModel, steps: int = 3, lr: float = 1e-3) -> list[float]:
    """A few AdamW steps on the joint loss; returns the loss before each step."""
    batch, is_tie = pair_batch(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(batch, with_lm=True)
        n = len(is_tie)
        loss = joint_loss(out.rewards[:n], out.rewards[n:], is_tie, out.lm_loss, lm_weight=0.5).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------------- prompting


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_labels_cover_only_the_rationale(make_model, name):
    model = make_model(name)
    plain, with_rationale = example(model, 1), example(model, 1, rationale=RATIONALE)
    n_prompt = plain.input_ids.shape[0]
    assert torch.equal(with_rationale.input_ids[:n_prompt], plain.input_ids)  # the prompt does not change
    assert plain.score_index == with_rationale.score_index == n_prompt - 1
    assert (with_rationale.labels[:n_prompt] == IGNORE_INDEX).all()  # prompt and image tokens masked
    assert torch.equal(with_rationale.labels[n_prompt:], with_rationale.input_ids[n_prompt:])
    tokenizer = model.processor.tokenizer
    # The labels are the assistant turn: the rationale and the family's end-of-turn token, nothing of the prompt.
    assert tokenizer.decode(with_rationale.labels[n_prompt:]).strip() == f"{RATIONALE}{tokenizer.eos_token}"
    messages = user_messages(scoring_text("make the ball red"))
    turn = model.processor.apply_chat_template(messages, tokenize=False)
    generation_prompt = model.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert generation_prompt.startswith(turn) and len(generation_prompt) > len(turn)
    # The score is read at the end of the generation prompt ("ASSISTANT:", "<|im_start|>assistant\n", ...).
    assert tokenizer.decode(plain.input_ids).endswith(generation_prompt[len(turn) :])
    assert plain.n_rationale_tokens == 0


def test_prompt_holds_both_images_and_the_instruction(make_model):
    model = make_model("tiny")
    prompt, templated = render_prompt(model.processor, scoring_text("make the ball red"))
    assert templated and prompt.count("<image>") == 2
    assert "Instruction: make the ball red" in prompt and "Rate how well the edit follows" in prompt
    encoded = example(model, 0)
    n_image_tokens = int((encoded.input_ids == model.backbone.config.image_token_id).sum())
    assert n_image_tokens == 2 * 49  # two 112 px images, 7×7 patches each
    assert encoded.image_inputs["pixel_values"].shape == (2, 3, 112, 112)


def test_processor_without_chat_template_gets_a_plain_prompt(make_model):
    model = make_model("tiny")
    model.processor.chat_template = None
    prompt, templated = render_prompt(model.processor, scoring_text("make the ball red"))
    assert not templated and prompt.startswith("<image><image>\n") and prompt.endswith("\nAnswer:")
    encoded = example(model, 0, rationale=RATIONALE)
    tokenizer = model.processor.tokenizer
    assert tokenizer.decode(encoded.input_ids[: encoded.score_index + 1]).endswith("Answer:")
    assert tokenizer.decode(encoded.labels[encoded.score_index + 1 :]) == f" {RATIONALE}{tokenizer.eos_token}"


def test_rationale_is_truncated_and_instruction_required(make_model):
    model = make_model("tiny")
    assert example(model, 0, rationale=RATIONALE * 20, max_rationale_tokens=7).n_rationale_tokens == 7
    assert example(model, 0, rationale="   ").n_rationale_tokens == 0
    with pytest.raises(ValueError, match="instruction is empty"):
        example(model, 0, instruction="  ")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_collate_right_pads(make_model, name):
    model = make_model(name)
    short, long = example(model, 0), example(model, 1, rationale=RATIONALE)
    batch = collate([short, long], model.processor)
    n = short.input_ids.shape[0]
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (2, long.input_ids.shape[0])
    assert batch.attention_mask[0, :n].all() and not batch.attention_mask[0, n:].any()
    assert (batch.labels[0] == IGNORE_INDEX).all() and batch.score_index.tolist() == [n - 1, n - 1]
    pixels = batch.extras["pixel_values"]
    if "image_grid_thw" in batch.extras:  # Qwen: every image's patches in one flat list, each image's grid apart
        grids = batch.extras["image_grid_thw"]
        assert grids.shape == (4, 3) and pixels.shape[0] == int(grids.prod(dim=1).sum())
    else:
        assert pixels.shape[0] == (4 if name == "tiny" else 2)  # LLaVA: images flat; Idefics3, SmolVLM: per sequence


# ---------------------------------------------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_training_steps_change_every_trainable_parameter(make_model, name):
    model = make_model(name)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = train_steps(model, steps=4)
    unchanged = {n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])}
    assert unchanged == UNUSED_BY_ARCHITECTURE[name]
    assert losses[-1] < losses[0]


def test_forward_outputs(make_model):
    model = make_model("tiny")
    batch, _ = pair_batch(model, n_pairs=2)
    out = model(batch, with_lm=False)
    assert out.rewards.shape == (4,) and out.features.shape == (4, model.hidden_size) and out.lm_loss is None
    with_lm = model(batch, with_lm=True)
    assert with_lm.lm_loss.ndim == 0 and with_lm.lm_loss.item() > 0
    torch.testing.assert_close(with_lm.rewards, out.rewards)
    no_rationale = collate([example(model, 3)], model.processor)
    assert model(no_rationale, with_lm=True).lm_loss.item() == 0.0


def test_lm_head_runs_on_rationale_positions_only(make_model):
    model = make_model("tiny")
    seen = []
    model.backbone.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    batch = collate([example(model, 0, rationale=RATIONALE), example(model, 1)], model.processor)
    model(batch, with_lm=True)
    assert seen == [(int((batch.labels != IGNORE_INDEX).sum()), model.hidden_size)]


# ---------------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_score_never_touches_the_lm_head_or_vocabulary(make_model, name):
    model = make_model(name)
    vocab = model.backbone.config.get_text_config().vocab_size
    calls = []
    model.backbone.get_output_embeddings().register_forward_hook(lambda *a: calls.append("lm_head"))

    def no_vocab_logits(module, args, output):
        tensor = output if isinstance(output, torch.Tensor) else None
        if tensor is not None and tensor.shape[-1] == vocab:
            calls.append(type(module).__name__)

    for module in model.modules():
        module.register_forward_hook(no_vocab_logits)
    scores = model.score(collate([example(model, 0), example(model, 1, rationale=RATIONALE)], model.processor))
    assert scores.shape == (2,) and not scores.requires_grad
    assert calls == []


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_rationale_cannot_change_the_score(make_model, name):
    model = make_model(name)
    plain = model.score(collate([example(model, 2)], model.processor))
    with_rationale = model.score(collate([example(model, 2, rationale=RATIONALE)], model.processor))
    assert (plain - with_rationale).abs().max().item() < 1e-6


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_score_is_invariant_to_padding_and_batch_mates(make_model, name):
    model = make_model(name)
    target = example(model, 4)
    longer = example(model, 5, instruction="replace the ball with a wooden cube and make the sky purple at night")
    shorter = example(model, 6, instruction="blur")
    alone = model.score(collate([target], model.processor))
    in_batch = model.score(collate([shorter, target, longer], model.processor))
    assert (alone[0] - in_batch[1]).abs().item() < 1e-5


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_batch_mates_with_other_image_sizes_do_not_change_a_score(make_model, name):
    """Dynamic-resolution families (Qwen) give each image its own token count; batching must keep them apart."""
    model = make_model(name)
    target = example(model, 7)
    mates = [example(model, 8, edited_size=(40, 120)), example(model, 9, edited_size=(128, 64), rationale=RATIONALE)]
    alone = model.score(collate([target], model.processor))
    in_batch = model.score(collate([mates[0], target, mates[1]], model.processor))
    assert (alone[0] - in_batch[1]).abs().item() < 1e-5
    if "image_grid_thw" in target.image_inputs:
        lengths = {ex.input_ids.shape[0] - ex.n_rationale_tokens for ex in [target, *mates]}
        assert len(lengths) == 3  # the three prompts really hold different numbers of image tokens


def test_bfloat16_backbone_keeps_a_float32_head(backbone_cache):
    model = JointRewardModel.from_config(JRMConfig(), cache_dir=backbone_cache, dtype=torch.bfloat16).eval()
    assert model.backbone.dtype == torch.bfloat16 and model.reward_head[0].weight.dtype == torch.float32
    out = model(collate([example(model, 0, rationale=RATIONALE)], model.processor), with_lm=True)
    assert out.rewards.dtype == torch.float32 and torch.isfinite(out.rewards).all()
    assert torch.isfinite(out.lm_loss) and out.lm_loss.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_save_and_load_give_identical_scores(make_model, name, tmp_path, backbone_cache):
    model = make_model(name)
    train_steps(model, steps=1)
    model.eval()
    batch = collate([example(model, i) for i in range(3)], model.processor)
    model.save(tmp_path / "jrm")
    loaded = JointRewardModel.load(tmp_path / "jrm", cache_dir=backbone_cache)
    assert loaded.backbone_name == name and loaded.jrm_config == model.jrm_config and not loaded.training
    torch.testing.assert_close(loaded.score(batch), model.score(batch), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_lora_trains_adapters_and_head_and_round_trips(make_model, name, tmp_path, backbone_cache):
    model = apply_lora(make_model(name), rank=4, alpha=8, target_modules=("q_proj", "v_proj"), dropout=0.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or f"{REWARD_HEAD_NAME}.modules_to_save" in n for n in trainable)
    assert any(REWARD_HEAD_NAME in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_steps(model, steps=2)  # lora_B starts at zero, so lora_A first moves on the second step
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    model.eval()
    batch = collate([example(model, i) for i in range(3)], model.processor)
    model.save(tmp_path / "lora")
    assert not (tmp_path / "lora" / "backbone").exists()  # the base is referenced, not copied
    assert any(k.startswith(REWARD_HEAD_NAME) for k in load_file(tmp_path / "lora" / "adapter.safetensors"))
    loaded = JointRewardModel.load(tmp_path / "lora", cache_dir=backbone_cache)
    assert loaded.is_lora and loaded.jrm_config.finetune == "lora" and loaded.jrm_config.lora_rank == 4
    trained_head = getattr(model, REWARD_HEAD_NAME).modules_to_save["default"]  # the copy peft trains and saves
    restored_head = getattr(loaded, REWARD_HEAD_NAME).modules_to_save["default"]
    for (name, p), (_, q) in zip(trained_head.state_dict().items(), restored_head.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    torch.testing.assert_close(loaded.score(batch), model.score(batch), rtol=0, atol=1e-6)


def test_lora_from_config(backbone_cache):
    config = JRMConfig(finetune="lora", lora_rank=2, lora_alpha=4, lora_target_modules=("q_proj",))
    model = JointRewardModel.from_config(config, cache_dir=backbone_cache)
    assert model.is_lora
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, rank=2, alpha=4, target_modules=("q_proj",), dropout=0.0)


# ---------------------------------------------------------------------------------------------------- config


def test_config_round_trips_and_validates():
    config = JRMConfig(lm_weight=0.0, lora_target_modules=["q_proj"])
    assert config.lora_target_modules == ("q_proj",)
    assert JRMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="lm_weight"):
        JRMConfig(lm_weight=-1)
    with pytest.raises(ValueError, match="tie_nu"):
        JRMConfig(tie_nu=float("nan"))
    with pytest.raises(ValueError, match="finetune"):
        JRMConfig(finetune="half")
    with pytest.raises(ValueError, match="Unknown JRMConfig fields"):
        JRMConfig.from_dict({"backbone": "tiny", "colour": "red"})
    with pytest.raises(ValueError, match="LoRA"):
        JRMConfig(lora_rank=0)
