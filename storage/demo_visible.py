"""What a candidate visibly did to its source, measured from the pixels: short phrases for simulated rationales.

`visible_changes(source, image)` compares the two pictures with numpy only, never with the edit that made them, so
a rationale built from it says what can be *seen* in the candidate ("it is clearly darker", "the colour is gone",
"only the top left corner changed") rather than what the instruction asked for. Each phrase is said only when its
measurement is well past what the other demo edits produce (thresholds checked on demo tasks, tests in
tests/storage/test_demo_visible.py), so it is true when said; when nothing specific is clear the phrase is a plain "it
changed all over" / "parts of it changed". Phrases never name a side "left"/"right" (corners are "top left" etc.),
so `trainer.data.neutral_rationale` leaves them alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from storage.demo_filters import COLOURS

NOTHING_MAD = 2.5  # mean |Δ| (0–255) below this: a re-encode or an edit too weak to see
CHANGED_PX = 40  # a pixel changed visibly when its largest channel |Δ| is above this
LOCAL_MAX_AREA = 0.15  # a local change covers at most this fraction of the picture …
CORNER_SHARE = 0.95  # … at least this share of it lies in one quadrant …
UNTOUCHED = 1.0  # … and the other quadrants changed at most this much (mean of the largest channel |Δ|)
FRAME_RING, FRAME_INSIDE = 0.75, 0.02  # a frame: this much of the outer 2 px changed, this little inside `MARGIN`
MARGIN = 0.15  # the outer band (a fraction of the side) that frames live in; layouts are compared inside it …
CORNER = 0.35  # … and outside the corner squares of this side, where shapes are drawn
FLAT_STD = 12.0  # painted pixels (a shape, a frame) vary at most this much per channel
# Layouts are compared by correlation: a flip or quarter turn of the source's matches at least `MATCH_CORR` and
# `MATCH_GAIN` better than the source as it stands (other edits reach 0.62 at most); below `NEGATIVE_CORR` light and
# dark are swapped; below `MOVED_CORR` with a histogram gap under `MOVED_GAP` × the mean luminance change, the
# picture moved (a crop or zoom, not a re-colouring).
MATCH_CORR, MATCH_GAIN, NEGATIVE_CORR, MOVED_CORR, MOVED_GAP = 0.85, 0.1, -0.5, 0.6, 0.5
BRIGHT_STEP, BRIGHT_CLEAR = 8.0, 25.0  # mean luminance change: "slightly", "clearly"
CONTRAST_UP, CONTRAST_DOWN = 1.35, 0.7  # luminance std ratio, said only when the mean stayed put
COLOURFUL = 6.0  # mean chroma of a picture with visible colour
CAST_MIN, CAST_GAIN = 20.0, 3.0  # a cast: the picture leans this much to a hue, this many times the source's lean …
CAST_EVERYWHERE = 0.7  # … and at least this share of its pixels moved towards that hue
BLURRIER, SHARPER = 0.6, 1.3  # ratio of contrast-normalised Laplacian energy
FEW_LEVELS = 32  # a posterized picture keeps at most this many values per channel
CLEAR, MOST_MEASURED = 10.0, 9.0  # the rank of an unmistakable change; measured ones rank by margin, up to this
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_TURNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # a flip or quarter turn of a (H, W) picture
    "the picture is reversed": lambda y: y[:, ::-1],
    "the picture is upside down": lambda y: y[::-1],
    "the picture is turned a quarter turn clockwise": lambda y: np.rot90(y, k=-1),
    "the picture is turned a quarter turn counterclockwise": lambda y: np.rot90(y, k=1),
}
Finding = tuple[float, str]  # (rank: how far past its threshold, phrase)


def visible_changes(source: Image.Image, image: Image.Image) -> list[str]:
    """A few short phrases (most telling first, at least one) on what `image` visibly changed from `source`."""
    s8, m8 = np.asarray(source.convert("RGB")), np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
    s, m = s8.astype(np.float32), m8.astype(np.float32)
    change = np.abs(m - s)  # (H, W, 3)
    delta = np.maximum(np.maximum(change[..., 0], change[..., 1]), change[..., 2])  # (H, W): largest channel |Δ|
    local = _local_change(m, delta)
    if local:
        return local
    if change.mean() < NOTHING_MAD:
        return ["almost nothing changed"]
    ys, ym = s @ LUMA, m @ LUMA  # (H, W)
    found = [_arrangement(ys, ym), _colour_change(s, m, ys, ym), _light_change(ys, ym), _texture_change(s8, m8, ys, ym)]
    ranked = sorted((f for f in found if f), key=lambda f: -f[0])  # stable: ties keep the order above
    if ranked:
        return [phrase for _, phrase in ranked]
    return ["it changed all over" if (delta > CHANGED_PX).mean() > 0.5 else "parts of it changed"]


def nearest_colour(rgb: np.ndarray, max_distance: float = 60.0) -> str | None:
    """The name in `COLOURS` nearest to the colour `rgb` (3,), or None when none is within `max_distance`."""
    name, distance = min(((n, float(np.linalg.norm(rgb - c))) for n, c in COLOURS.items()), key=lambda x: x[1])
    return name if distance <= max_distance else None


def _with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _measured(margin: float) -> float:
    return min(margin, MOST_MEASURED)


# --- local: a frame or a corner --------------------------------------------------------------------------------


def _local_change(m: np.ndarray, delta: np.ndarray) -> list[str]:
    """A frame along the edges or a patch in one corner (the rest untouched), with its colour if painted; else []."""
    changed = delta > CHANGED_PX  # (H, W)
    size = changed.shape[0]
    band = max(1, round(size * MARGIN))
    ring = np.ones_like(changed)
    ring[2:-2, 2:-2] = False  # the outermost 2 px
    if changed[ring].mean() > FRAME_RING and changed[band:-band, band:-band].mean() < FRAME_INSIDE:
        return _painted("frame appeared along the edges", m[ring]) or ["a frame appeared along the edges"]
    if not 0 < changed.mean() <= LOCAL_MAX_AREA:
        return []
    half = size // 2
    for vertical, rows in (("top", slice(0, half)), ("bottom", slice(half, size))):
        for horizontal, cols in (("left", slice(0, half)), ("right", slice(half, size))):
            quadrant = np.zeros_like(changed)
            quadrant[rows, cols] = True
            if (changed & quadrant).sum() >= CORNER_SHARE * changed.sum() and delta[~quadrant].mean() < UNTOUCHED:
                return [
                    f"only the {vertical} {horizontal} corner changed",
                    *_painted("patch appeared there", m[changed]),
                ]
    return []


def _painted(what: str, pixels: np.ndarray) -> list[str]:
    """["<a colour> <what>"] when `pixels` (N, 3) are one flat named colour (painted on), else []."""
    colour = nearest_colour(pixels.mean(axis=0)) if pixels.std(axis=0).max() < FLAT_STD else None
    return [f"{_with_article(colour)} {what}"] if colour else []


# --- global: layout, colour, light, texture --------------------------------------------------------------------


def _blocks(y: np.ndarray) -> np.ndarray:
    """A luminance picture (H, W) averaged over 4×4 blocks: (H/4, W/4), its coarse layout."""
    rows, cols = (y.shape[0] // 4) * 4, (y.shape[1] // 4) * 4
    return y[:rows, :cols].reshape(rows // 4, 4, cols // 4, 4).mean(axis=(1, 3), dtype=np.float64)


def _layout_mask(shape: tuple[int, int]) -> np.ndarray:
    """Blocks inside the outer `MARGIN` and outside the four `CORNER` squares: symmetric under flips and turns."""
    rows = np.abs(np.arange(shape[0]) + 0.5 - shape[0] / 2) / shape[0]  # 0 at the centre, 0.5 at the edge
    cols = np.abs(np.arange(shape[1]) + 0.5 - shape[1] / 2) / shape[1]
    inside = (rows[:, None] < 0.5 - MARGIN) & (cols[None, :] < 0.5 - MARGIN)
    corner = (rows[:, None] > 0.5 - CORNER) & (cols[None, :] > 0.5 - CORNER)
    return inside & ~corner


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    scale = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / scale if scale > 1e-9 else 0.0


def _arrangement(ys: np.ndarray, ym: np.ndarray) -> Finding | None:
    """A flip or quarter turn, light and dark swapped, or a layout that moved; None when the layout stayed."""
    blocks = _blocks(ys)
    mask = _layout_mask(blocks.shape)  # without the outer band and the corners, where frames and shapes go
    before, after = blocks[mask], _blocks(ym)[mask]
    if before.std() < 2 or after.std() < 2:  # a flat picture has no layout to compare
        return None
    as_is = _correlation(before, after)
    turns = {phrase: turn(blocks) for phrase, turn in _TURNS.items()}  # a turned picture's blocks, turned
    turned = {phrase: _correlation(t[mask], after) for phrase, t in turns.items() if t.shape == mask.shape}
    phrase, best = max(turned.items(), key=lambda item: item[1])
    if best >= MATCH_CORR and best >= as_is + MATCH_GAIN:
        return CLEAR, phrase
    if as_is < NEGATIVE_CORR and _histogram_gap(255 - ys, ym) < _histogram_gap(ys, ym):
        return CLEAR, "the light and dark are swapped"
    moved = as_is < MOVED_CORR and _histogram_gap(ys, ym) < MOVED_GAP * float(np.abs(ym - ys).mean())
    return (CLEAR / 2, "the picture moved around") if moved else None


def _histogram_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |Δ| between the sorted values of two same-size pictures: how far apart their histograms are."""
    return float(np.abs(np.sort(a, axis=None) - np.sort(b, axis=None)).mean())


def _colour_change(s: np.ndarray, m: np.ndarray, ys: np.ndarray, ym: np.ndarray) -> Finding | None:
    """The colour gone, a cast of one hue, stronger or duller colours; None when it looks as colourful as before."""
    chroma_s, chroma_m = s - ys[..., None], m - ym[..., None]  # (H, W, 3)
    before, after = float(np.abs(chroma_s).mean()), float(np.abs(chroma_m).mean())
    if before >= COLOURFUL and after < 0.25 * before:
        return CLEAR, "the colour is gone"
    cast = _cast(chroma_s, chroma_m)
    if cast:
        return cast
    if after > 1.5 * before + 4:
        phrase = "the colours are stronger" if before >= COLOURFUL else "it has picked up some colour"
        return _measured(after / (1.5 * before + 4)), phrase
    if before >= COLOURFUL and after < 0.6 * before:
        return _measured(0.6 * before / max(after, 1e-6)), "the colours are duller"
    return None


def _cast(chroma_s: np.ndarray, chroma_m: np.ndarray) -> Finding | None:
    """The named hue the whole picture now leans to (chroma (H, W, 3)), far more than the source did; else None."""
    lean_s, lean_m = chroma_s.mean(axis=(0, 1)), chroma_m.mean(axis=(0, 1))  # (3,)
    hues = {name: _unit(np.asarray(rgb, dtype=np.float64) - np.dot(rgb, LUMA)) for name, rgb in COLOURS.items()}
    name, hue = max(hues.items(), key=lambda item: float(np.dot(_unit(lean_m), item[1])))
    lean, lean_before = float(np.dot(lean_m, hue)), float(np.dot(lean_s, hue))
    everywhere = float(((chroma_m - chroma_s) @ hue > 0).mean()) >= CAST_EVERYWHERE  # not a painted area
    if np.dot(_unit(lean_m), hue) >= 0.9 and lean >= max(CAST_MIN, CAST_GAIN * lean_before) and everywhere:
        return _measured(lean / CAST_MIN), f"it has {_with_article(name)} cast"
    return None


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def _light_change(ys: np.ndarray, ym: np.ndarray) -> Finding | None:
    """Darker or brighter; with the brightness unchanged, stronger or weaker contrast; else None."""
    delta = float(ym.mean() - ys.mean())
    if abs(delta) >= BRIGHT_STEP:
        degree = "clearly" if abs(delta) >= BRIGHT_CLEAR else "slightly"
        return _measured(abs(delta) / BRIGHT_STEP), f"it is {degree} {'darker' if delta < 0 else 'brighter'}"
    ratio = float(ym.std() / max(ys.std(), 1e-6))
    if ratio >= CONTRAST_UP:
        return _measured(ratio / CONTRAST_UP), "the contrast is stronger"
    return (_measured(CONTRAST_DOWN / ratio), "the contrast is weaker") if ratio <= CONTRAST_DOWN else None


def _texture_change(s8: np.ndarray, m8: np.ndarray, ys: np.ndarray, ym: np.ndarray) -> Finding | None:
    """Blocky, reduced to a few flat colours, blurrier or sharper; None when the detail looks the same."""
    if _is_mosaic(m8) and not _is_mosaic(s8):
        return CLEAR, "it looks blocky, like big pixels"
    if _levels(m8) <= FEW_LEVELS < _levels(s8):
        return CLEAR, "it is reduced to a few flat colours"
    ratio = _detail(ym) / max(_detail(ys), 1e-6)
    if ratio <= BLURRIER:
        return _measured(BLURRIER / max(ratio, 1e-6)), "it looks blurrier"
    return (_measured(ratio / SHARPER), "it looks sharper") if ratio >= SHARPER else None


def _is_mosaic(pixels: np.ndarray) -> bool:
    """Whether `pixels` (H, W, 3) is made of flat square tiles of 2–8 px that differ from their neighbours."""
    codes = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1].astype(np.int32) << 8) | pixels[..., 2]
    if (codes[:, 1:] == codes[:, :-1]).mean() < 0.4:  # a mosaic repeats most neighbours
        return False
    for block in range(8, 1, -1):
        corners = codes[::block, ::block]
        tiles = np.repeat(np.repeat(corners, block, axis=0), block, axis=1)[: codes.shape[0], : codes.shape[1]]
        varied = (corners[:, 1:] != corners[:, :-1]).mean() > 0.2  # not merely a flat picture
        if varied and (tiles == codes).mean() >= 0.95:
            return True
    return False


def _levels(pixels: np.ndarray) -> int:
    """The most distinct values any channel of `pixels` (H, W, 3) uint8 takes."""
    return max(int(np.count_nonzero(np.bincount(pixels[..., c].ravel(), minlength=256))) for c in range(3))


def _detail(y: np.ndarray) -> float:
    """Mean |Laplacian| of a luminance picture over its std: fine detail, whatever the contrast."""
    laplacian = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]  # (H-2, W-2)
    return float(np.abs(laplacian).mean() / max(float(y.std()), 1e-6))
