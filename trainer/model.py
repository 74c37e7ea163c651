"""`JointRewardModel`: a vision-language backbone, a reward head, and the one forward every caller uses.

The hidden states come from the backbone's base model (no LM head). The reward head reads the last-layer state at
the score position (the last prompt token). The LM head is applied only to positions that predict a rationale token
and only when `with_lm=True`, so scoring never computes vocabulary logits. See docs/method.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from trainer.backbones import Backbone, load_backbone
from trainer.base_identity import describe_base, verified_base_folder
from trainer.configs import DictConfig
from trainer.heads import (
    DIMENSION_HEAD_NAME,
    UNCERTAINTY_HEAD_NAME,
    RewardScores,
    add_extra_heads,
    extra_head_names,
    load_extra_heads,
    make_mlp,
    save_extra_heads,
)
from trainer.losses import IGNORE_INDEX, lm_nll
from trainer.prompting import Batch
from trainer.resolution import set_pixel_budget

CHECKPOINT_FORMAT = 1
REWARD_HEAD_NAME = "reward_head"  # the attribute below; peft trains and saves it only if listed in modules_to_save


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class JRMConfig(DictConfig):
    """Architecture and objective of a joint reward model (saved with every checkpoint)."""

    backbone: str = _help(
        "Preset name ('tiny-edit': pretrained, the default; 'tiny', 'tiny-idefics3': random init), hub id or folder.",
        default="tiny-edit",
    )
    lm_weight: float = _help("λ in L = L_pref + λ·L_lm; 0 is the discriminative baseline.", default=0.5)
    tie_nu: float = _help(
        "Davidson tie parameter ν >= 0 for tie / both-bad votes (0: plain Bradley–Terry).", default=1.0
    )
    head_hidden: int = _help("Hidden width of the reward MLP; 0 uses the backbone's hidden size.", default=0)
    head_activation: Literal["gelu", "tanh"] = _help("Activation between the reward MLP's two layers.", default="gelu")
    max_rationale_tokens: int = _help("Rationales are cut to this many tokens for the LM loss.", default=128)
    finetune: Literal["full", "lora"] = _help(
        "'full' trains every weight (tiny); 'lora' trains adapters + head.", default="full"
    )
    lora_rank: int = _help("LoRA rank r.", default=16)
    lora_alpha: int = _help("LoRA scaling α (the update is scaled by α / r).", default=32)
    lora_dropout: float = _help("Dropout on the LoRA branch.", default=0.05)
    lora_target_modules: tuple[str, ...] = _help(
        "Module names that get LoRA adapters.", default=("q_proj", "k_proj", "v_proj", "o_proj")
    )
    min_image_pixels: int = _help(
        "Fewest pixels per image for dynamic-resolution backbones (Qwen2-VL family); 0: the backbone's own.", default=0
    )
    max_image_pixels: int = _help(
        "Most pixels per image for dynamic-resolution backbones (Qwen2-VL family); 0: the backbone's own.", default=0
    )
    uncertainty_head: bool = _help(
        "Add a head for log σ of the reward (the preference loss then integrates over N(μ, σ²)).", default=False
    )
    uncertainty_loss: Literal["gauss_hermite", "probit"] = _help(
        "How the loss integrates over N(μ, σ²): Gauss–Hermite quadrature, or the probit approximation.",
        default="gauss_hermite",
    )
    dimension_heads: tuple[str, ...] = _help(
        "Dimensions to score with a dimension head, e.g. ('instruction_following', 'quality', 'preservation'); "
        "trained on votes' dimension_scores.",
        default=(),
    )
    dimension_weight: float = _help("Weight of the dimension heads' Davidson loss in the total.", default=0.5)

    def __post_init__(self) -> None:
        self.lora_target_modules = tuple(self.lora_target_modules)
        self.dimension_heads = tuple(self.dimension_heads)
        _check_heads(self)
        if not self.backbone.strip():
            raise ValueError("backbone is empty: give a tiny preset name ('tiny'), a hub id or a local folder.")
        if not self.lm_weight >= 0:
            raise ValueError(f"lm_weight must be >= 0 (0 = discriminative baseline), got {self.lm_weight}.")
        if not self.tie_nu >= 0:
            raise ValueError(f"tie_nu must be >= 0 (try 1.0), got {self.tie_nu}.")
        if self.head_hidden < 0:
            raise ValueError(f"head_hidden must be >= 0 (0 = the backbone's hidden size), got {self.head_hidden}.")
        if self.head_activation not in ("gelu", "tanh"):
            raise ValueError(f"head_activation must be 'gelu' or 'tanh', got {self.head_activation!r}.")
        if self.max_rationale_tokens < 1:
            raise ValueError(f"max_rationale_tokens must be >= 1, got {self.max_rationale_tokens}.")
        if self.finetune not in ("full", "lora"):
            raise ValueError(f"finetune must be 'full' or 'lora', got {self.finetune!r}.")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError("LoRA needs lora_rank >= 1, lora_alpha > 0 and 0 <= lora_dropout < 1.")
        for name in ("min_image_pixels", "max_image_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0 (0: the backbone's own), got {value!r}.")
        if 0 < self.max_image_pixels < self.min_image_pixels:
            raise ValueError(
                f"max_image_pixels ({self.max_image_pixels}) is below min_image_pixels ({self.min_image_pixels})."
            )
        if not self.lora_target_modules:
            raise ValueError("lora_target_modules is empty; name the projections to adapt, e.g. ('q_proj', 'v_proj').")

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        data = asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        data["dimension_heads"] = list(self.dimension_heads)
        return data


def _check_heads(config: JRMConfig) -> None:
    if not isinstance(config.uncertainty_head, bool):
        raise ValueError(f"uncertainty_head must be true or false, got {config.uncertainty_head!r}.")
    if config.uncertainty_loss not in ("gauss_hermite", "probit"):
        raise ValueError(f"uncertainty_loss must be 'gauss_hermite' or 'probit', got {config.uncertainty_loss!r}.")
    names = config.dimension_heads
    if not all(isinstance(n, str) and n.isidentifier() for n in names) or len(set(names)) != len(names):
        raise ValueError(
            f"dimension_heads must be distinct names such as 'instruction_following' (letters, digits, _), got {names}."
        )
    if isinstance(config.dimension_weight, bool) or not 0 <= config.dimension_weight < float("inf"):
        raise ValueError(f"dimension_weight must be a finite number >= 0 (try 0.5), got {config.dimension_weight!r}.")
    if names and config.tie_nu == 0:
        raise ValueError("dimension_heads need tie_nu > 0: a dimension rated 0 (the same) is a tie (try 1.0).")


@dataclass
class JRMOutput:
    """What one forward returns."""

    rewards: torch.Tensor  # (B,)
    features: torch.Tensor  # (B, H) last-layer hidden state at the score position
    lm_loss: torch.Tensor | None  # mean NLL of rationale tokens; None unless with_lm
    log_sigma: torch.Tensor | None = None  # (B,) in heads.LOG_SIGMA_RANGE; None without an uncertainty head
    dimension_scores: torch.Tensor | None = None  # (B, D) in `JRMConfig.dimension_heads` order; None without them


class DroppedLMHead(nn.Module):
    """Stands in for a removed LM head; calling it is a bug in scorer mode."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "This model was loaded for scoring, without its LM head; load it with JointRewardModel.load to train."
        )


def make_reward_head(hidden_size: int, head_hidden: int, activation: str) -> nn.Sequential:
    """Linear(H, h) → activation → Linear(h, 1)."""
    return make_mlp(hidden_size, head_hidden, activation, 1)


class JointRewardModel(nn.Module):
    """Shared backbone + reward head; `forward` is the only place a score is computed."""

    def __init__(self, backbone: Backbone, config: JRMConfig):
        super().__init__()
        self.backbone = backbone.model
        self.processor = backbone.processor
        self.backbone_name = backbone.name
        self.jrm_config = config  # not `config`: peft reads `model.config` as a transformers config
        hidden = self.hidden_size
        self.reward_head = make_reward_head(hidden, config.head_hidden or hidden, config.head_activation)
        add_extra_heads(
            self, hidden_size=hidden, head_hidden=config.head_hidden or hidden, activation=config.head_activation
        )
        self.lm_head_dropped = False  # True when loaded for scoring (trainer.scorer): no LM loss, no save
        self.base_cache_dir: str | Path | None = None  # where a named base is built or cached (LoRA records its files)

    @classmethod
    def from_config(
        cls,
        config: JRMConfig,
        *,
        cache_dir: str | Path | None = None,
        dtype: torch.dtype | None = None,
        backbone: Backbone | None = None,
    ) -> JointRewardModel:
        """Load `config.backbone` (unless `backbone` is that base, loaded already) with a reward head (a preset's
        pretrained one when it fits, else fresh), and LoRA adapters when `finetune == 'lora'`."""
        if backbone is None:
            backbone = load_backbone(config.backbone, cache_dir=cache_dir, dtype=dtype)
        set_pixel_budget(
            backbone.processor,
            min_pixels=config.min_image_pixels,
            max_pixels=config.max_image_pixels,
            backbone=config.backbone,
        )
        model = cls(backbone, config)
        model.base_cache_dir = cache_dir
        if backbone.reward_head is not None:
            model.start_from_pretrained_head(backbone.reward_head)
        if config.finetune == "lora":
            apply_lora(
                model,
                rank=config.lora_rank,
                alpha=config.lora_alpha,
                target_modules=config.lora_target_modules,
                dropout=config.lora_dropout,
            )
        return model

    def start_from_pretrained_head(self, path: Path) -> bool:
        """Load a preset's pretrained reward head when its shape matches this config's; whether it did."""
        state = load_file(path)
        own = self.reward_head.state_dict()
        if self.jrm_config.head_activation != "gelu" or {k: v.shape for k, v in state.items()} != {
            k: v.shape for k, v in own.items()
        }:
            return False  # another head shape or activation: start fresh, as for any backbone
        self.reward_head.load_state_dict(state)
        return True

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.get_text_config().hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def is_lora(self) -> bool:
        return hasattr(self, "peft_config")

    def forward(self, batch: Batch, *, with_lm: bool) -> JRMOutput:
        """Rewards at the score positions, their features, and the rationale NLL when `with_lm`."""
        batch = batch.to(self.device)
        hidden = self._last_hidden_state(batch)  # (B, T, H)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        features = hidden[rows, batch.score_index]  # (B, H)
        head_input = features.to(next(self.reward_head.parameters()).dtype)
        rewards = self.reward_head(head_input).squeeze(-1).float()  # (B,)
        uncertainty, dims = getattr(self, UNCERTAINTY_HEAD_NAME), getattr(self, DIMENSION_HEAD_NAME)
        log_sigma = uncertainty(head_input).float() if uncertainty is not None else None  # (B,)
        dimension_scores = dims(head_input).float() if dims is not None else None  # (B, D)
        lm_loss = self._rationale_nll(hidden, batch.labels) if with_lm else None
        return JRMOutput(rewards, features, lm_loss, log_sigma=log_sigma, dimension_scores=dimension_scores)

    @torch.no_grad()
    def score(self, batch: Batch) -> torch.Tensor:
        """Rewards (B,) without gradients or vocabulary logits; call `eval()` first for deterministic scores."""
        return self.score_all(batch).mu

    @torch.no_grad()
    def score_all(self, batch: Batch) -> RewardScores:
        """μ (B,), and σ (B,) and the dimension scores (B, D) when the model has those heads, from one forward."""
        out = self.forward(batch, with_lm=False)
        sigma = None if out.log_sigma is None else out.log_sigma.exp()
        return RewardScores(out.rewards, sigma, out.dimension_scores, self.jrm_config.dimension_heads)

    def _last_hidden_state(self, batch: Batch) -> torch.Tensor:
        """The base model's last hidden state (B, T, H): the multimodal decoder without the LM head."""
        base = self.backbone.base_model
        if base is self.backbone:
            raise TypeError(
                f"{type(self.backbone).__name__} has no separate base model; JRM needs a backbone whose "
                "`base_model` returns hidden states without the LM head (transformers' *ForConditional"
                "Generation / AutoModelForImageTextToText classes do)."
            )
        dtype = self.backbone.dtype
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.model_inputs().items()}
        return base(**inputs, use_cache=False, return_dict=True).last_hidden_state

    def _rationale_nll(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean NLL of labelled tokens: the LM head runs on the positions that predict them, nowhere else."""
        if self.lm_head_dropped:
            raise RuntimeError("with_lm=True needs the LM head, but this model was loaded for scoring without it.")
        targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
        mask = targets != IGNORE_INDEX  # (B, T-1)
        selected = hidden[:, :-1][mask]  # (N, H)
        logits = self.backbone.get_output_embeddings()(selected)  # (N, V)
        cap = getattr(self.backbone.config.get_text_config(), "final_logit_softcapping", None)
        if cap:  # Gemma-style models soft-cap their logits inside their own forward; do the same
            logits = torch.tanh(logits / cap) * cap
        return lm_nll(logits, targets[mask])

    def save(self, path: str | Path) -> Path:
        """Write config JSON, the reward head (safetensors) and the backbone (save_pretrained), or the LoRA adapter
        and the identity of its base (its revision and file hashes, checked by every load)."""
        if self.lm_head_dropped:
            raise RuntimeError("This model was loaded for scoring, without its LM head; save a model loaded with it.")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"format": CHECKPOINT_FORMAT, "backbone_name": self.backbone_name, "jrm": self.jrm_config.to_dict()}
        if self.is_lora:  # adapter weights + the reward head (peft's modules_to_save); the base is referenced
            state = get_peft_model_state_dict(self)
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, path / "adapter.safetensors")
            revision = getattr(self.backbone.config, "_commit_hash", None)
            base = describe_base(self.jrm_config.backbone, cache_dir=self.base_cache_dir, revision=revision)
            meta["base"] = base.to_dict()
        else:
            head_state = {k: v.detach().contiguous().cpu() for k, v in self.reward_head.state_dict().items()}
            save_file(head_state, path / "reward_head.safetensors")
            save_extra_heads(self, path)
            self.backbone.save_pretrained(path / "backbone")
            self.processor.save_pretrained(path / "backbone")
        (path / "jrm_config.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: str | Path | None = None,
    ) -> JointRewardModel:
        """Load a `save()`d model with its LM head (to train on or save again) in eval mode; for scoring, versions are
        loaded by `trainer.scorer.load_scorer_model`, which never materialises the LM head."""
        model = cls.load_with(path, lambda folder: load_backbone(str(folder), dtype=dtype), cache_dir=cache_dir)
        return model.to(device).eval()

    @classmethod
    def load_with(
        cls, path: str | Path, load_base: Callable[[Path], Backbone], *, cache_dir: str | Path | None
    ) -> JointRewardModel:
        """A `save()`d model whose backbone `load_base(folder)` loads: from the version's `backbone/`, or for a LoRA
        version from its base's folder (in `cache_dir` for a tiny preset or hub id) once the base's files are checked
        against the version's record."""
        path = Path(path)
        meta = _read_meta(path)
        config = JRMConfig.from_dict(meta["jrm"])
        if config.finetune == "lora":
            folder = verified_base_folder(path, meta.get("base"), name=config.backbone, cache_dir=cache_dir)
            model = cls.from_config(config, cache_dir=cache_dir, backbone=load_base(folder))
            _load_adapter(model, load_file(path / "adapter.safetensors"))
        else:
            model = cls(load_base(path / "backbone"), config)
            model.reward_head.load_state_dict(load_file(path / "reward_head.safetensors"))
            load_extra_heads(model, path)  # a config from before the extra heads has none: nothing to load
        model.backbone_name = meta["backbone_name"]
        return model


def _read_meta(path: Path) -> dict:
    """A saved model's jrm_config.json; a clear error when it is missing or of another format."""
    try:
        meta = json.loads((path / "jrm_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a saved joint reward model (jrm_config.json: {exc}).") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {meta.get('format')}; this code reads {CHECKPOINT_FORMAT}.")
    return meta


def apply_lora(
    model: JointRewardModel, *, rank: int, alpha: int, target_modules: tuple[str, ...] | list[str], dropout: float
) -> JointRewardModel:
    """Inject LoRA adapters in place; only adapters and the heads (modules_to_save) stay trainable."""
    if model.is_lora:
        raise ValueError("This model already has LoRA adapters.")
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=dropout,
        modules_to_save=[REWARD_HEAD_NAME, *extra_head_names(model)],
    )
    inject_adapter_in_model(lora, model)
    model.jrm_config = replace(
        model.jrm_config,
        finetune="lora",
        lora_rank=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        lora_target_modules=tuple(target_modules),
    )
    return model


def _load_adapter(model: JointRewardModel, state: dict[str, torch.Tensor]) -> None:
    """Load adapter + head weights; every adapter and head weight the model expects must be in `state`."""
    result = set_peft_model_state_dict(model, state)
    saved = [f"{name}.modules_to_save" for name in (REWARD_HEAD_NAME, *extra_head_names(model))]
    missing = [k for k in result.missing_keys if "lora_" in k or any(s in k for s in saved)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"Adapter checkpoint does not match the model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}."
        )
