"""The one scorer loader: a saved version without its LM head ever read or built, in the serving dtype."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration

from storage.settings import SettingsError, load_settings
from tests.trainer.conftest import ARCHITECTURES, example
from trainer.backbones import Backbone
from trainer.model import DroppedLMHead, JointRewardModel, JRMConfig, apply_lora
from trainer.prompting import collate
from trainer.scorer import load_scorer_model, scorer_dtype


@pytest.fixture
def scorer_settings(tmp_path, backbone_cache):
    """Settings whose data folder's backbone cache is the session's (where a LoRA version's base is found)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "backbones").symlink_to(backbone_cache, target_is_directory=True)
    return load_settings(environ={}, data_dir=data)


def lm_head_tensors(model: JointRewardModel) -> list[str]:
    """Names of parameters and buffers that belong to the LM head (tied ones included)."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return [name for name, _ in named if "lm_head" in name]


def head_free_checkpoint(version: Path) -> None:
    """Rewrite the version's backbone weights without the LM head, as if it had never been saved."""
    weights = version / "backbone" / "model.safetensors"
    state = load_file(weights)
    assert any("lm_head" in key for key in state)
    save_file({k: v for k, v in state.items() if "lm_head" not in k}, weights, metadata={"format": "pt"})


def batch_of(model: JointRewardModel):
    return collate([example(model, i) for i in range(3)], model.processor)


# ---------------------------------------------------------------------------------------------------- dtype


def test_a_bad_scorer_dtype_is_refused_with_the_choices():
    with pytest.raises(SettingsError, match=r"JRM_SCORER_DTYPE='fp8' is not one of auto, float32, bfloat16, float16"):
        load_settings(environ={"JRM_SCORER_DTYPE": "fp8"})
    with pytest.raises(ValueError, match="Unknown scorer dtype 'half'"):
        scorer_dtype("half", "cpu")


def test_auto_is_bfloat16_on_cuda_and_float32_on_cpu():
    assert load_settings(environ={}).scorer_dtype == "auto"
    assert scorer_dtype("auto", "cpu") is torch.float32
    assert scorer_dtype("auto", "cuda") is torch.bfloat16 and scorer_dtype("auto", "cuda:1") is torch.bfloat16
    assert scorer_dtype("float16", "cpu") is torch.float16 and scorer_dtype("bfloat16", "cpu") is torch.bfloat16


def test_a_bfloat16_scorer_keeps_a_float32_head(make_model, tmp_path, scorer_settings):
    model = make_model("tiny")
    model.save(tmp_path / "jrm")
    settings = load_settings(environ={"JRM_SCORER_DTYPE": "bfloat16"}, data_dir=scorer_settings.data_dir)
    scorer = load_scorer_model(tmp_path / "jrm", settings=settings, device="cpu")
    assert scorer.backbone.dtype == torch.bfloat16 and scorer.reward_head[0].weight.dtype == torch.float32
    scores = scorer.score(batch_of(model))
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


# ---------------------------------------------------------------------------------------------------- no LM head


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_scorer_never_reads_the_lm_head_and_scores_like_a_full_load(make_model, name, tmp_path, scorer_settings):
    model = make_model(name)
    with torch.no_grad():
        model.reward_head[-1].bias += 0.25  # a head of its own, not the preset's
    model.save(tmp_path / "jrm")
    full = JointRewardModel.load(tmp_path / "jrm")
    expected = full.score(batch_of(full))
    head_free_checkpoint(tmp_path / "jrm")  # a loader that read the head, or built one, would now fail or differ

    scorer = load_scorer_model(tmp_path / "jrm", settings=scorer_settings, device="cpu")

    assert isinstance(scorer.backbone.get_output_embeddings(), DroppedLMHead) and scorer.lm_head_dropped
    assert lm_head_tensors(scorer) == [] and not scorer.training
    head = full.backbone.get_output_embeddings().weight.numel()
    assert sum(p.numel() for p in scorer.parameters()) == sum(p.numel() for p in full.parameters()) - head
    torch.testing.assert_close(scorer.score(batch_of(scorer)), expected, rtol=0, atol=0)


def test_every_weight_but_the_head_must_load(make_model, tmp_path, scorer_settings):
    make_model("tiny-idefics3").save(tmp_path / "jrm")
    weights = tmp_path / "jrm" / "backbone" / "model.safetensors"
    state = load_file(weights)
    dropped = next(key for key in state if "embed_tokens" in key)
    save_file({k: v for k, v in state.items() if k != dropped}, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"does not match its config: missing \[.*embed_tokens"):
        load_scorer_model(tmp_path / "jrm", settings=scorer_settings, device="cpu")


def test_tied_embeddings_are_kept_and_only_the_head_is_stubbed(make_model, tmp_path, scorer_settings):
    tiny = make_model("tiny")
    config = tiny.backbone.config
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = True
    tied = LlavaForConditionalGeneration(config)
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    model = JointRewardModel(Backbone(tied, tiny.processor, "tiny", 112, True), JRMConfig(backbone="tiny")).eval()
    model.save(tmp_path / "tied")

    scorer = load_scorer_model(tmp_path / "tied", settings=scorer_settings, device="cpu")

    assert lm_head_tensors(scorer) == []
    assert torch.equal(scorer.backbone.get_input_embeddings().weight, tied.get_input_embeddings().weight)
    torch.testing.assert_close(scorer.score(batch_of(scorer)), model.score(batch_of(model)), rtol=0, atol=0)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_lora_version_loads_without_the_lm_head(make_model, name, tmp_path, scorer_settings, backbone_cache):
    model = apply_lora(make_model(name), rank=2, alpha=4, target_modules=("q_proj", "v_proj"), dropout=0.0)
    with torch.no_grad():  # lora_B starts at zero: give the adapters an effect
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(param_name)))
    model.eval().save(tmp_path / "lora")
    full = JointRewardModel.load(tmp_path / "lora", cache_dir=backbone_cache)

    scorer = load_scorer_model(tmp_path / "lora", settings=scorer_settings, device="cpu")

    assert scorer.is_lora and lm_head_tensors(scorer) == []
    assert isinstance(scorer.backbone.get_output_embeddings(), DroppedLMHead)
    torch.testing.assert_close(scorer.score(batch_of(scorer)), full.score(batch_of(full)), rtol=0, atol=0)


def test_a_scorer_refuses_to_train_or_be_saved(make_model, tmp_path, scorer_settings):
    make_model("tiny").save(tmp_path / "jrm")
    scorer = load_scorer_model(tmp_path / "jrm", settings=scorer_settings, device="cpu")
    batch = collate([example(scorer, 0, rationale="B kept the background.")], scorer.processor)
    with pytest.raises(RuntimeError, match="loaded for scoring"):
        scorer(batch, with_lm=True)
    with pytest.raises(RuntimeError, match="loaded for scoring"):
        scorer.save(tmp_path / "again")


# ---------------------------------------------------------------------------------------------------- memory

PEAK_CHILD = """
import gc, json, sys
from pathlib import Path
import torch
import transformers.models.llava.modeling_llava  # imported before measuring: both loads find it loaded
from storage.settings import load_settings
from trainer.model import JointRewardModel
from trainer.scorer import load_scorer_model

torch.set_num_threads(1)
path, data_dir = sys.argv[1], Path(sys.argv[2])
settings = load_settings(environ={"JRM_SCORER_DTYPE": "bfloat16"}, data_dir=data_dir)

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

def peak_mib(load):
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak RSS (VmHWM) starts again from the RSS now
    before = kib("VmRSS")
    model = load()
    peak = kib("VmHWM")
    del model
    gc.collect()
    return (peak - before) / 1024

print(json.dumps({
    "scorer": peak_mib(lambda: load_scorer_model(path, settings=settings, device="cpu")),
    "full": peak_mib(lambda: JointRewardModel.load(path, dtype=torch.bfloat16)),
}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS is read from Linux's /proc")
def test_peak_memory_of_a_scorer_load_leaves_out_the_lm_head(make_model, tmp_path, scorer_settings):
    """A vocabulary of 131,072 makes the head 32 MiB in bf16: a load that read or converted it would show it."""
    import json
    import os
    import subprocess
    import sys

    tiny = make_model("tiny")
    config = tiny.backbone.config
    config.text_config.vocab_size = 131_072
    torch.manual_seed(0)
    big = LlavaForConditionalGeneration(config)
    JointRewardModel(Backbone(big, tiny.processor, "tiny", 112, True), JRMConfig(backbone="tiny")).save(tmp_path / "v")
    head_mib = big.get_output_embeddings().weight.numel() * 2 / 2**20  # bf16
    del big
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed tensors go back to the system at once
    child = [sys.executable, "-c", PEAK_CHILD, str(tmp_path / "v"), str(scorer_settings.data_dir)]
    done = subprocess.run(child, capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    assert peaks["full"] - peaks["scorer"] > 0.75 * head_mib, peaks
