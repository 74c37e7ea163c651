"""The one scorer loader: a saved model version loaded for scoring, its LM head never materialised.

`load_scorer_model` is what the app's scoring service, the registry (`registry.load_scorer`: the gate, the worker),
the CLI's `score` / `evaluate` and the benchmarks call. The backbone class is built with its output embeddings
replaced by `DroppedLMHead` before transformers reads the checkpoint, so the head's weights are never read from disk,
converted or copied to a device (a 150k-token vocabulary at hidden 3584 is ~1 GB in bf16). Every other weight must
load: a missing or unexpected key is an error, not a random init. Tied embeddings share the input embeddings' weight,
which the decoder needs anyway; the stub only stops anything from using it as an LM head. The backbone is loaded in
the serving dtype (`JRM_SCORER_DTYPE`); the reward head stays float32. Design: docs/method.md §3.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

from storage.settings import SCORER_DTYPES, Settings
from trainer.backbones import Backbone, image_size_of
from trainer.edit_view import wrap_if_marked
from trainer.families import load_processor
from trainer.model import DroppedLMHead, JointRewardModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
assert set(DTYPES) | {"auto"} == set(SCORER_DTYPES)  # the setting's choices and these must not drift apart


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def scorer_dtype(setting: str, device: torch.device | str) -> torch.dtype:
    """The backbone dtype for `JRM_SCORER_DTYPE`: 'auto' is bfloat16 on CUDA and float32 elsewhere."""
    if setting == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if setting not in DTYPES:
        raise ValueError(f"Unknown scorer dtype {setting!r}; choose one of {', '.join(SCORER_DTYPES)}.")
    return DTYPES[setting]


def load_scorer_model(path: str | Path, *, settings: Settings, device: str | None = None) -> JointRewardModel:
    """A saved version in eval mode for scoring on `device` (default: a GPU when visible), without its LM head.

    A LoRA version's base is found in `settings.data_dir / "backbones"` and checked against the version's record.
    """
    device = device or default_device()
    dtype = scorer_dtype(settings.scorer_dtype, device)
    model = JointRewardModel.load_with(
        path, lambda folder: load_headless_backbone(folder, dtype=dtype), cache_dir=settings.data_dir / "backbones"
    )
    model.lm_head_dropped = True  # `with_lm=True` and `save` refuse from now on
    return model.to(device).eval()


def load_headless_backbone(folder: Path, *, dtype: torch.dtype) -> Backbone:
    """The image-text-to-text model saved in `folder` with `DroppedLMHead` for its LM head, and its processor."""
    config = AutoConfig.from_pretrained(folder)
    try:
        model_class = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)]
    except KeyError:
        raise ValueError(f"{folder} holds a {config.model_type!r} model, not an image-text-to-text one.") from None
    model, info = _headless(model_class).from_pretrained(folder, dtype=dtype, output_loading_info=True)
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    if missing or unexpected or info["mismatched_keys"]:
        raise ValueError(
            f"The backbone in {folder} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"mismatched {sorted(info['mismatched_keys'])[:5]}; save it again with save_pretrained."
        )
    processor = wrap_if_marked(load_processor(str(folder)), str(folder))
    return Backbone(model=model, processor=processor, name=str(folder), image_size=image_size_of(model), is_tiny=False)


@functools.cache
def _headless(model_class: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """`model_class` whose LM head is `DroppedLMHead` from construction on, so loading its weights skips the head."""

    class Headless(model_class):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)  # transformers builds it on the meta device: nothing allocated
            head = self.get_output_embeddings()
            prefix = next(name for name, module in self.named_modules() if module is head) + "."
            self.set_output_embeddings(DroppedLMHead())
            # Nothing ties to the stub; the checkpoint's head weights are skipped quietly instead of "unexpected".
            tied = self.all_tied_weights_keys.items()
            self.all_tied_weights_keys = {t: s for t, s in tied if not (t.startswith(prefix) or s.startswith(prefix))}
            ignored = self._keys_to_ignore_on_load_unexpected
            self._keys_to_ignore_on_load_unexpected = {*ignored, "^" + re.escape(prefix)}

    # transformers looks checkpoint key conversions up by class name and skips them for classes defined outside its
    # package; the subclass only changes what __init__ leaves in place of the head, so it passes as the original.
    Headless.__name__, Headless.__qualname__ = model_class.__name__, model_class.__qualname__
    Headless.__module__ = model_class.__module__
    return Headless
