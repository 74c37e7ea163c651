"""Vision-language backbones: any `AutoModelForImageTextToText` checkpoint, or a built-in offline preset.

`tiny-edit` (the default) is a tiny LLaVA pretrained by the project on generated edits and shipped in
trainer/presets/tiny-edit with its reward head (trainer/pretrain, docs/training.md). The random-init tiny presets
("tiny": LLaVA, "tiny-idefics3": Idefics3) have a byte-level BPE tokenizer trained here on a generated corpus;
they are built once per seed, saved with `save_pretrained`, and then loaded through the same `from_pretrained`
path as a downloaded checkpoint, so tests exercise real code; they stay for fast tests and ablations.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
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
from trainer.presets import PRESET_NAME, REWARD_HEAD_FILE, check_preset, preset_dir

TINY_FORMAT = 1  # bump when a preset's architecture or tokenizer changes, so stale caches are rebuilt
TINY_SEED = 0
TINY_VOCAB_SIZE = 3072
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]

# A plain USER/ASSISTANT template. `{{ '\n' }}` because transformers renders with trim_blocks.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER:"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}" + IMAGE_TOKEN + "{% else %}"
    "{{ '\\n' }}{{ item['text'] }}{% endif %}{% endfor %}{{ '\\n' }}"
    "{% elif message['role'] == 'assistant' %}ASSISTANT:"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %} {{ item['text'] }}{% endif %}{% endfor %}"
    "{{ eos_token }}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


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
# The tiny presets' corpus and tokenizer
# --------------------------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


_OBJECTS = _words("""
cat dog horse bird car bus truck bicycle boat tree flower house building bridge road river lake sea mountain sky
cloud sun moon star person man woman child girl boy face hair eye hand shirt dress hat shoe bag table chair sofa bed
lamp window door wall floor roof fence garden field forest beach street city village train plane kite ball cup
bottle plate bowl apple banana orange cake pizza sandwich book phone laptop clock vase mirror painting poster sign
umbrella bench statue fountain castle tower church barn tent road lighthouse waterfall desert island snowman pumpkin
candle guitar piano violin camera robot dragon unicorn butterfly fish whale dolphin shark turtle frog rabbit
squirrel fox wolf bear lion tiger elephant giraffe zebra monkey penguin owl eagle parrot duck chicken cow sheep goat
pig
""")
_ADJECTIVES = _words("""
red orange yellow green blue purple pink brown black white gray golden silver wooden metallic glass plastic stone
marble paper snowy rainy foggy sunny cloudy dark bright colorful pale vivid faded old new ancient modern tiny small
large huge tall short wide narrow round square shiny matte smooth rough wet dry frozen burning glowing cartoon
realistic vintage futuristic watercolor sketchy pixelated blurry sharp noisy clean sepia neon pastel
""")
_EDITS = [
    "make the {o} {a}",
    "turn the {o} into a {o2}",
    "change the color of the {o} to {a}",
    "add a {o} next to the {o2}",
    "remove the {o}",
    "replace the {o} with a {a} {o2}",
    "make the background {a}",
    "put a {a} hat on the {o}",
    "rotate the image by ninety degrees",
    "flip the picture horizontally",
    "convert the photo to grayscale",
    "blur the background behind the {o}",
    "tint the whole image {a}",
    "crop the image around the {o}",
    "make it look like winter",
    "make it night time",
    "add {a} text that says hello",
    "make the {o} smile",
    "brighten the photo",
    "darken the sky",
    "give the {o} {a} fur",
    "paint the {o} in a {a} style",
]
_RATIONALES = [
    "{x} kept the background but ignored '{e}'.",
    "{x} changed the {o} to {a} as asked, while {y} left it unchanged.",
    "Both edits failed: the {o} is still there.",
    "{x} follows the instruction, but the {o2} looks distorted.",
    "{y} added artifacts around the {o} and the colors are wrong.",
    "Neither image shows a {a} {o}; both are bad.",
    "The two edits are equally good; each one made the {o} {a}.",
    "{x} is closer to the request, {y} overdid it.",
    "{x} preserved the identity of the {o}; {y} replaced the whole scene.",
    "{y} only cropped the image instead.",
    "The edit in {x} is subtle but correct; {y} did something unrelated to the {o2}.",
    "{x} is blurry, yet it is the only one that made the {o} {a}.",
    "Both look the same to me, a tie.",
]
_COMMON = _words("""
about above across action after again against age ago agree air all allow almost alone along already also always
among amount animal answer any appear area arm around arrive art ask attention autumn away baby back bad balance
bank base basket beautiful become before begin behind believe below best better between big bit black blood board
body bone border bottom box brain branch bread break breakfast breath bring brother build burn business busy buy
call calm can capital care carry case catch cause center certain chance change character cheap check choice choose
circle class clear climb close clothes coast coat cold collect come common company compare complete condition
consider contain continue control cook cool corner correct cost could count country course cover create cross crowd
cry current cut damage dance danger daughter day dead deal dear decide deep degree depend describe design detail
develop difference different difficult dinner direction discover distance divide doctor draw dream drink drive drop
during early earth easy eat edge effect effort egg either else empty end enemy energy engine enjoy enough enter
equal error even evening event ever every exact example except excite exercise expect experience explain express
extra fact fair fall family famous far farm fast father fear feel few fight figure fill final find fine finger
finish fire first fit fix flat floor flow fly follow food foot force foreign forget form free fresh friend front
fruit full fun future game gather general gentle get gift give glad goal good grand grass great ground group grow
guess guide half happen happy hard have head health hear heart heat heavy help here high hill history hold hole home
hope hot hour however huge human hundred hunt idea imagine important inch include indeed inside interest iron join
journey judge jump just keep key kind king kitchen knee know land language last late laugh law lay lead learn least
leave left leg less letter level lie life lift light like line list listen little live long look lose loud love low
machine main major many map mark market matter may mean measure meat meet member memory metal middle might mile milk
mind minute miss mix moment money month more morning most mother motion move much music must name nation natural
near neck need neighbor never next nice night noise none north nose note nothing notice now number object ocean
offer office often oil once only open order other outside over own page pair paper part party pass past path pattern
pay peace people perhaps period pick piece place plain plan plant play please point poor popular position possible
pound power prepare present press pretty print probable problem produce product promise protect proud provide pull
push quality question quick quiet race rain raise reach read ready reason receive record region remember repeat
reply report rest result return rich ride right ring rise rock room root rope rule run safe sail salt same save say
scale school science score search season seat second section see seed seem select sell send sense sentence separate
serve set settle shape share sharp shine ship shop shore short shoulder shout show side sight silent simple since
sing single sister sit size skill skin sleep slow smell smile snow soft soil soldier solution some song soon sound
south space speak special speed spell spend spot spread spring square stand start state stay steel step stick still
stone stop store story straight strange stream strength strong student study subject succeed sudden suggest summer
supply support sure surface surprise swim system take talk teach team tell temperature test thank thick thin thing
think third thought thousand through throw tie time tire together tomorrow tonight tool top total touch toward town
track trade travel trip trouble true try turn type under understand until usual valley value various very view visit
voice wait walk want warm wash watch water wave way weather week weight welcome west wheel where whether which while
whole why wild will win wind winter wish with without wonder word work world worry write wrong yard year yes yet
young
""")
_GENERIC = """The quick brown fox jumps over the lazy dog. A picture is worth a thousand words, and an edited picture
should keep everything the instruction did not ask to change. Annotators compare two candidates side by side and write
a short rationale explaining their choice. A good edit follows the instruction faithfully, keeps the identity of the
subject, preserves the background, and avoids visible artifacts such as smears, seams, halos or distorted hands.
Researchers train a reward model on these preferences and use it to rank image editing models on a leaderboard.
Source image, then the edited image. Instruction: Rate how well the edit follows the instruction. USER: ASSISTANT:
Yesterday we walked along the river, talked about music, science, history and cooking, and watched the sunset.
Numbers like 0 1 2 3 4 5 6 7 8 9 10 25 50 100 and symbols such as , . ; : ! ? ' " ( ) - / appear in ordinary text.
However, therefore, because, although, whereas, meanwhile, instead, finally, perhaps, really, very, quite, almost.
""".strip().split("\n")
_SUFFIXES = ["s", "ed", "ing", "er", "ly", "ness", "ful", "less"]


def tiny_corpus(seed: int = TINY_SEED, n_sentences: int = 6000) -> Iterator[str]:
    """Varied English sentences about image editing (instructions, rationales) plus some generic text."""
    rng = random.Random(seed)

    def fill(template: str) -> str:
        x, y = rng.sample(["A", "B", "Left", "Right", "The first", "The second"], 2)
        return template.format(
            o=rng.choice(_OBJECTS),
            o2=rng.choice(_OBJECTS),
            a=rng.choice(_ADJECTIVES),
            x=x,
            y=y,
            e=rng.choice(_EDITS).format(o="object", o2="item", a="wood"),
        )

    for i in range(n_sentences):
        kind = i % 4
        if kind == 0:  # the tiny chat template's own layout
            yield (
                f"USER:\nSource image, then the edited image. Instruction: {fill(rng.choice(_EDITS))}\n"
                f"Rate how well the edit follows the instruction.\nASSISTANT: {fill(rng.choice(_RATIONALES))}"
            )
        elif kind in (1, 2):
            yield fill(rng.choice(_RATIONALES))
        else:
            words = rng.sample(_COMMON, 8) + [w + rng.choice(_SUFFIXES) for w in rng.sample(_OBJECTS + _COMMON, 6)]
            yield " ".join(words).capitalize() + ". " + rng.choice(_GENERIC).strip()


def train_tiny_tokenizer(
    seed: int = TINY_SEED, vocab_size: int = TINY_VOCAB_SIZE, *, extra_corpus: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `tiny_corpus(seed)` (and `extra_corpus`); deterministic for a seed."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(itertools.chain(tiny_corpus(seed), extra_corpus), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=4096,
    )


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


def load_backbone(
    name_or_path: str = PRESET_NAME, *, cache_dir: str | Path | None = None, dtype: torch.dtype | None = None
) -> Backbone:
    """Load an image-text-to-text model and its processor: a preset name, a hub id or a local folder.

    Presets are the random-init tiny ones (built into `cache_dir` on first use) and the shipped pretrained ones
    (`trainer/presets/<name>`, checked against their manifest first).
    """
    is_tiny = name_or_path in TINY_PRESETS or name_or_path in SHIPPED_PRESETS
    head = None
    if name_or_path in SHIPPED_PRESETS:
        folder = preset_dir(name_or_path)
        check_preset(folder)
        source, hub_cache, head = str(folder), None, folder / REWARD_HEAD_FILE
    elif is_tiny:
        source, hub_cache = str(ensure_tiny_preset(name_or_path, cache_dir)), None
    else:
        source, hub_cache = name_or_path, (str(cache_dir) if cache_dir is not None else None)
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, cache_dir=hub_cache, dtype=dtype)
        processor = wrap_if_marked(AutoProcessor.from_pretrained(source, cache_dir=hub_cache), source)
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
        image_size=_image_size(model),
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


def _image_size(model: PreTrainedModel) -> int:
    """The vision tower's input side in pixels (0 when the config does not say)."""
    vision = getattr(model.config, "vision_config", None)
    size = getattr(vision, "image_size", 0) if vision is not None else 0
    return int(size if isinstance(size, int) else max(size))
