"""The demo's pixel operations: each `EditFn(image, params, strength)` returns a new edited picture.

`strength` 1.0 is the full edit and smaller values a weaker one (a flawed candidate's "partial strength"); edits
with no weaker version (flips, rotations, inversion) ignore it. `storage.demo_kinds` names these operations and
says how people ask for them.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

Params = dict[str, str]
EditFn = Callable[[Image.Image, Params, float], Image.Image]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (30, 80, 230),
    "yellow": (240, 215, 30),
    "purple": (140, 50, 200),
    "orange": (245, 135, 20),
}
DIRECTIONS = ("clockwise", "counterclockwise")
SHAPES = ("circle", "square")
CORNERS = ("top left", "top right", "bottom left", "bottom right")


def _blend(image: Image.Image, edited: Image.Image, strength: float) -> Image.Image:
    return edited if strength >= 1 else Image.blend(image, edited, strength)


def flip_horizontal(image: Image.Image, _params: Params, _strength: float) -> Image.Image:
    """Mirror left to right."""
    return ImageOps.mirror(image)


def flip_vertical(image: Image.Image, _params: Params, _strength: float) -> Image.Image:
    """Mirror top to bottom."""
    return ImageOps.flip(image)


def rotate(image: Image.Image, params: Params, _strength: float) -> Image.Image:
    """A quarter turn in `params["direction"]` (clockwise or counterclockwise)."""
    clockwise = params["direction"] == "clockwise"
    return image.transpose(Image.Transpose.ROTATE_270 if clockwise else Image.Transpose.ROTATE_90)


def grayscale(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    """Drain the colour (fully at strength 1)."""
    return _blend(image, ImageOps.grayscale(image).convert("RGB"), strength)


def sepia(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    """Tone it brown like an old photograph."""
    toned = ImageOps.colorize(ImageOps.grayscale(image), black=(40, 26, 13), white=(255, 236, 196), mid=(170, 120, 70))
    return _blend(image, toned, strength)


def tint(image: Image.Image, params: Params, strength: float) -> Image.Image:
    """Cast it in `params["colour"]`."""
    toned = ImageOps.colorize(ImageOps.grayscale(image), black=(0, 0, 0), white=COLOURS[params["colour"]])
    toned = ImageEnhance.Brightness(toned).enhance(1.3)
    return Image.blend(image, toned, 0.75 * strength)


def blur(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    """A Gaussian blur, radius 2.5 px at full strength."""
    return image.filter(ImageFilter.GaussianBlur(radius=2.5 * strength))


def sharpen(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    """An unsharp mask, 300 % at full strength."""
    return image.filter(ImageFilter.UnsharpMask(radius=2, percent=round(300 * strength), threshold=0))


def brightness(factor: float) -> EditFn:
    """An edit scaling brightness by `factor` at full strength (less at lower strength)."""

    def edit(image: Image.Image, _params: Params, strength: float) -> Image.Image:
        return ImageEnhance.Brightness(image).enhance(1 + (factor - 1) * strength)

    return edit


def contrast(factor: float) -> EditFn:
    """An edit scaling contrast by `factor` at full strength (less at lower strength)."""

    def edit(image: Image.Image, _params: Params, strength: float) -> Image.Image:
        return ImageEnhance.Contrast(image).enhance(1 + (factor - 1) * strength)

    return edit


def invert(image: Image.Image, _params: Params, _strength: float) -> Image.Image:
    """The photographic negative."""
    return ImageOps.invert(image)


def zoom(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    """Enlarge the centre, 2× at full strength."""
    width, height = image.size
    keep = 1 / (1 + strength)  # 2× at full strength
    box = (width * (1 - keep) / 2, height * (1 - keep) / 2, width * (1 + keep) / 2, height * (1 + keep) / 2)
    return image.resize(image.size, Image.Resampling.LANCZOS, box=box)


def border(image: Image.Image, params: Params, strength: float) -> Image.Image:
    """A frame of `params["colour"]` along the edges, 9 % of the short side thick at full strength."""
    framed = image.copy()
    width = max(1, round(min(image.size) * 0.09 * strength))
    ImageDraw.Draw(framed).rectangle(
        (0, 0, image.width - 1, image.height - 1), outline=COLOURS[params["colour"]], width=width
    )
    return framed


def shape_box(size: tuple[int, int], corner: str, strength: float) -> tuple[int, int, int, int]:
    """The bounding box of the overlay shape in `corner` ("top left", …) of a picture of `size`."""
    side = max(3, round(min(size) * 0.3 * strength))
    margin = max(2, round(min(size) * 0.05))
    vertical, horizontal = corner.split()
    left = margin if horizontal == "left" else size[0] - margin - side
    top = margin if vertical == "top" else size[1] - margin - side
    return left, top, left + side - 1, top + side - 1


def shape(image: Image.Image, params: Params, strength: float) -> Image.Image:
    """A filled `params["shape"]` of `params["colour"]` in `params["corner"]` (box: `shape_box`)."""
    drawn = image.copy()
    draw = ImageDraw.Draw(drawn)
    box = shape_box(image.size, params["corner"], strength)
    fill = COLOURS[params["colour"]]
    draw.ellipse(box, fill=fill) if params["shape"] == "circle" else draw.rectangle(box, fill=fill)
    return drawn


def pixelate(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    """Average into square blocks, 8 px at full strength."""
    block = max(2, round(8 * strength))
    small = image.resize((max(1, image.width // block), max(1, image.height // block)), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.NEAREST)


def posterize(image: Image.Image, _params: Params, strength: float) -> Image.Image:
    """Fewer bits per channel: 2 at full strength."""
    return ImageOps.posterize(image, max(1, round(8 - 6 * strength)))
