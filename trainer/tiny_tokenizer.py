"""The tiny presets' tokenizer: a byte-level BPE trained on a generated corpus of image-editing English.

Deterministic for a seed, so a tiny preset is rebuilt identically anywhere; `trainer.backbones` builds the tiny
models around it, and the pretraining recipe (trainer/pretrain/recipe.py) trains it with an extra corpus of its own.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

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
