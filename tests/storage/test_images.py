"""The content-addressed image store: bad input first, then normalisation, dedupe and blob writing.

Every file is built here in memory; no binary is committed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import PIL.Image
import pytest
from PIL import ExifTags, ImageCms, ImageFile
from sqlalchemy import func, select

import storage.images
from storage.images import (
    ImageRejected,
    decode_upload,
    encode_png,
    image_path,
    open_image,
    store_image,
    store_pil_image,
)
from storage.models import Image

# --- building the corpus --------------------------------------------------------------------------------------


def noise_picture(width: int = 48, height: int = 32, seed: int = 0) -> PIL.Image.Image:
    """Random RGB pixels: incompressible, so the image data fills most of the file."""
    return PIL.Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))


def plain_picture(width: int, height: int, color=(40, 90, 200), mode: str = "RGB") -> PIL.Image.Image:
    return PIL.Image.new(mode, (width, height), color)


def encode(picture: PIL.Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def animated(fmt: str) -> bytes:
    first, second = noise_picture(seed=1), noise_picture(seed=2)
    return encode(first, fmt, save_all=True, append_images=[second], duration=100, loop=0)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG declaring width × height all-black pixels: ~50 MB raw, a few KB on disk."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def damaged_in_the_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(16) + data[middle + 16 :]


def jpeg_with_orientation(picture: PIL.Image.Image, orientation: int) -> bytes:
    exif = PIL.Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encode(picture, "JPEG", quality=95, exif=exif)


NOISE_PNG = encode(noise_picture(64, 64), "PNG")
NOISE_JPEG = encode(noise_picture(64, 64), "JPEG", quality=90)
NOISE_WEBP = encode(noise_picture(64, 64), "WEBP", quality=90)

# name → (file bytes, or a function building them; a regex the message must match)
BAD_FILES: dict[str, tuple[bytes | Callable[[], bytes], str]] = {
    "empty": (b"", r"empty \(0 bytes\)"),
    "text": (b"just some notes about an image, not an image\n" * 20, "not an image"),
    "html": (b"<!DOCTYPE html><html><body><img src='cat.png'><svg></svg></body></html>", "not an image"),
    "random-bytes": (random.Random(7).randbytes(4096), "not an image"),
    "riff-wave": (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28), "not an image"),
    "svg": (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "^SVG files"),
    "gif-static": (lambda: encode(noise_picture(), "GIF"), "^GIF files are not supported.*PNG, JPEG or WebP"),
    "gif-animated": (lambda: animated("GIF"), "^GIF files are not supported"),
    "bmp": (lambda: encode(noise_picture(), "BMP"), "^BMP files are not supported"),
    "tiff": (lambda: encode(noise_picture(), "TIFF"), "^TIFF files are not supported"),
    "webp-animated": (lambda: animated("WEBP"), r"animated \(2 frames\)"),
    "apng": (lambda: animated("PNG"), r"animated \(2 frames\)"),
    "png-truncated": (NOISE_PNG[: len(NOISE_PNG) // 2], "PNG file is truncated"),
    "jpeg-truncated": (NOISE_JPEG[: len(NOISE_JPEG) // 2], "JPEG file is truncated"),
    "webp-truncated": (NOISE_WEBP[: len(NOISE_WEBP) // 2], "WEBP file is truncated"),
    "png-corrupt-middle": (damaged_in_the_middle(NOISE_PNG), "PNG file is corrupt"),
    "png-corrupt-header": (b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG file is corrupt"),
    "jpeg-corrupt-header": (b"\xff\xd8\xff" + random.Random(3).randbytes(64), "JPEG file is corrupt"),
    "decompression-bomb": (bomb_png, r"20000x20000 = 400\.0 megapixels, over the 40 megapixel limit"),
    "one-pixel": (lambda: encode(plain_picture(1, 1), "PNG"), r"1x1 pixels; each side must be at least 8"),
    "one-by-5000": (lambda: encode(plain_picture(1, 5000), "PNG"), r"1x5000 pixels; each side must be at least 8"),
    "too-elongated": (lambda: encode(plain_picture(8, 500), "PNG"), r"8x500 pixels, an aspect ratio over 50:1"),
}


# --- helpers ------------------------------------------------------------------------------------------------


def blob_listing(settings) -> list[str]:
    root = settings.blob_dir
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def row_count(session) -> int:
    return session.scalar(select(func.count()).select_from(Image))


def assert_rejected(session, settings, data: bytes, phrase: str) -> ImageRejected:
    before = (row_count(session), blob_listing(settings))
    with pytest.raises(ImageRejected, match=phrase) as caught:
        store_image(session, data=data, settings=settings)
    assert (row_count(session), blob_listing(settings)) == before
    return caught.value


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(actual, expected, strict=True))


@pytest.fixture
def one_image_stored(session, settings) -> Image:
    """A committed image, so 'nothing changed' is checked against a non-empty store."""
    image = store_image(session, data=NOISE_PNG, settings=settings)
    session.commit()
    return image


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_is_rejected_and_nothing_is_written(name, session, settings, one_image_stored):
    data, phrase = BAD_FILES[name]
    assert_rejected(session, settings, data() if callable(data) else data, phrase)


def test_every_rejection_says_what_to_do(session, settings):
    for data, _ in BAD_FILES.values():
        with pytest.raises(ImageRejected) as caught:
            store_image(session, data=data() if callable(data) else data, settings=settings)
        assert re.fullmatch(r".+: [a-z][^:]*\.", str(caught.value)), str(caught.value)  # what's wrong: what to do.


def test_oversized_file_is_refused_before_anything_else(session, settings, one_image_stored):
    small_limit = dataclasses.replace(settings, max_upload_mb=0.01)
    for data in (NOISE_PNG, random.Random(1).randbytes(20_000)):  # a valid image and junk: the size comes first
        error = assert_rejected(session, small_limit, data, r"over the 0\.01 MB upload limit")
        assert "JRM_MAX_UPLOAD_MB" in str(error)


def test_pixel_limit_comes_from_settings(session, settings, one_image_stored):
    tight = dataclasses.replace(settings, max_pixels=1000)
    error = assert_rejected(session, tight, encode(noise_picture(48, 32), "PNG"), "over the 0.001 megapixel limit")
    assert "JRM_MAX_PIXELS" in str(error)


def test_decompression_bomb_is_refused_from_its_header_without_decoding(session, settings, monkeypatch):
    bomb = bomb_png()
    assert len(bomb) < 200_000
    with pytest.raises(PIL.Image.DecompressionBombError):  # what PIL.Image.open would have said instead
        PIL.Image.open(io.BytesIO(bomb))

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(PIL.Image.Image, "load", no_decoding)
    limit = PIL.Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        assert_rejected(session, settings, bomb, "megapixel limit")
    assert PIL.Image.MAX_IMAGE_PIXELS == limit


def test_truncated_images_must_not_be_loaded_leniently(session, settings, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        store_image(session, data=NOISE_JPEG, settings=settings)
    assert row_count(session) == 0 and blob_listing(settings) == []


def test_store_pil_image_applies_the_same_limits(session, settings, one_image_stored):
    before = (row_count(session), blob_listing(settings))
    for picture, phrase in [(plain_picture(4, 40), "at least 8 pixels"), (plain_picture(600, 10), "aspect ratio")]:
        with pytest.raises(ImageRejected, match=phrase):
            store_pil_image(session, image=picture, settings=settings)
    assert (row_count(session), blob_listing(settings)) == before


# --- accepted files ---------------------------------------------------------------------------------------------


def test_png_is_stored_losslessly_under_the_blob_dir(session, settings):
    picture = noise_picture(48, 32)
    image = store_image(session, data=encode(picture, "PNG"), settings=settings)
    path = image_path(settings, image)
    assert path.is_relative_to(settings.blob_dir)
    assert path == settings.blob_dir / image.sha256[:2] / f"{image.sha256}.png"
    payload = path.read_bytes()
    assert (image.format, image.width, image.height, image.byte_size) == ("png", 48, 32, len(payload))
    assert image.sha256 == hashlib.sha256(payload).hexdigest()
    reopened = open_image(settings, image)
    assert reopened.mode == "RGB" and reopened.tobytes() == picture.tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_upright_rgb_jpeg_and_webp_are_kept_byte_for_byte(fmt, session, settings):
    data = encode(noise_picture(40, 24), fmt, quality=85)
    image = store_image(session, data=data, settings=settings)
    assert image.format == fmt.lower() and (image.width, image.height) == (40, 24)
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert image_path(settings, image).read_bytes() == data
    assert open_image(settings, image).tobytes() == PIL.Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def test_lossless_webp_round_trips_exactly(session, settings):
    picture = noise_picture(32, 32)
    image = store_image(session, data=encode(picture, "WEBP", lossless=True), settings=settings)
    assert open_image(settings, image).tobytes() == picture.tobytes()


def test_exif_orientation_is_applied(session, settings):
    upright = plain_picture(32, 64, (128, 128, 128))
    upright.paste((255, 0, 0), (0, 0, 16, 16))  # a red marker in the top-left corner
    # Orientation 6 means "rotate 90° clockwise to display", so the file holds the picture turned anticlockwise.
    data = jpeg_with_orientation(upright.transpose(PIL.Image.Transpose.ROTATE_90), orientation=6)
    assert PIL.Image.open(io.BytesIO(data)).size == (64, 32)
    image = store_image(session, data=data, settings=settings)
    assert (image.format, image.width, image.height) == ("png", 32, 64)
    stored = open_image(settings, image)
    assert close_to(stored.getpixel((4, 4)), (255, 0, 0), 24)
    assert close_to(stored.getpixel((28, 4)), (128, 128, 128), 24)
    assert close_to(stored.getpixel((4, 60)), (128, 128, 128), 24)


SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def swapped_primaries_icc() -> bytes:
    """An RGB profile like sRGB with the red and green primaries exchanged: its pure red is sRGB's pure green."""
    data = bytearray(SRGB_ICC)
    (count,) = struct.unpack(">I", data[128:132])
    entries = {}
    for index in range(count):
        signature, offset, size = struct.unpack(">4sII", data[132 + 12 * index:144 + 12 * index])
        entries[signature] = (index, offset, size)
    (red, *red_at), (green, *green_at) = entries[b"rXYZ"], entries[b"gXYZ"]
    struct.pack_into(">4sII", data, 132 + 12 * red, b"rXYZ", *green_at)
    struct.pack_into(">4sII", data, 132 + 12 * green, b"gXYZ", *red_at)
    return bytes(data)


def test_a_colour_profile_is_applied_so_the_stored_pixels_are_srgb(session, settings):
    picture = plain_picture(32, 16, (255, 0, 0))
    picture.paste((0, 0, 255), (16, 0, 32, 16))
    data = encode(picture, "JPEG", quality=95, icc_profile=swapped_primaries_icc())
    image = store_image(session, data=data, settings=settings)
    stored = open_image(settings, image)
    assert image.format == "png" and "icc_profile" not in PIL.Image.open(image_path(settings, image)).info
    assert close_to(stored.getpixel((4, 8)), (0, 255, 0), 12), stored.getpixel((4, 8))  # its red is sRGB green
    assert close_to(stored.getpixel((28, 8)), (0, 0, 255), 12), stored.getpixel((28, 8))
    assert decode_upload(data, settings=settings).tobytes() == stored.tobytes()  # the score tab sees the same


def test_a_transparent_picture_with_a_profile_is_converted_then_composited(session, settings):
    picture = rgba_picture("RGBA")
    picture.paste((255, 0, 0, 255), (8, 0, 16, 16))
    image = store_image(session, data=encode(picture, "PNG", icc_profile=swapped_primaries_icc()), settings=settings)
    stored = open_image(settings, image)
    assert close_to(stored.getpixel((2, 8)), (255, 255, 255), 2)
    assert close_to(stored.getpixel((12, 8)), (0, 255, 0), 12), stored.getpixel((12, 8))


@pytest.mark.parametrize("profile", [SRGB_ICC, b"not an ICC profile at all", SRGB_ICC[:200]],
                         ids=["srgb", "garbage", "truncated"])
def test_a_jpeg_tagged_srgb_or_with_an_unusable_profile_is_kept_byte_for_byte(profile, session, settings):
    data = encode(noise_picture(40, 24), "JPEG", quality=85, icc_profile=profile)
    assert PIL.Image.open(io.BytesIO(data)).info.get("icc_profile") == profile
    image = store_image(session, data=data, settings=settings)
    assert image.format == "jpeg" and image_path(settings, image).read_bytes() == data


def test_a_profile_for_another_colour_space_than_the_pixels_is_ignored(session, settings):
    data = encode(plain_picture(16, 16, 200, "L"), "JPEG", quality=95, icc_profile=swapped_primaries_icc())
    stored = open_image(settings, store_image(session, data=data, settings=settings))
    assert close_to(stored.getpixel((8, 8)), (200, 200, 200), 4)


def sixteen_bit_gray() -> PIL.Image.Image:
    picture = PIL.Image.new("I;16", (16, 16), 0)
    picture.paste(65535, (0, 0, 8, 16))  # left half white, right half black
    return picture


def palette_picture(transparent: bool) -> PIL.Image.Image:
    picture = PIL.Image.new("P", (16, 16), 1)
    picture.putpalette([0, 0, 0, 250, 120, 10] + [0] * 762)
    picture.paste(0, (8, 0, 16, 16))
    if transparent:
        picture.info["transparency"] = 1
    return picture


def rgba_picture(mode: str) -> PIL.Image.Image:
    picture = PIL.Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # left: fully transparent
    picture.paste((0, 0, 255, 255), (8, 0, 16, 16))  # right: opaque blue
    return picture if mode == "RGBA" else picture.convert("LA")


# name → (file bytes, stored format, expected RGB on the left (2, 8) and right (12, 8), tolerance)
MODE_CASES = {
    "cmyk-jpeg": (lambda: encode(plain_picture(16, 16, (0, 255, 255, 0), "CMYK"), "JPEG", quality=95), "png",
                  (255, 0, 0), (255, 0, 0), 8),
    "gray-jpeg": (lambda: encode(plain_picture(16, 16, 200, "L"), "JPEG", quality=95), "png",
                  (200, 200, 200), (200, 200, 200), 4),
    "palette-png": (lambda: encode(palette_picture(False), "PNG"), "png", (250, 120, 10), (0, 0, 0), 0),
    "palette-transparent": (lambda: encode(palette_picture(True), "PNG"), "png", (255, 255, 255), (0, 0, 0), 0),
    "16-bit-png": (lambda: encode(sixteen_bit_gray(), "PNG"), "png", (255, 255, 255), (0, 0, 0), 0),
    "rgba-png": (lambda: encode(rgba_picture("RGBA"), "PNG"), "png", (255, 255, 255), (0, 0, 255), 0),
    "la-png": (lambda: encode(rgba_picture("LA"), "PNG"), "png", (255, 255, 255), (29, 29, 29), 0),
    "rgba-webp": (lambda: encode(rgba_picture("RGBA"), "WEBP", lossless=True), "png",
                  (255, 255, 255), (0, 0, 255), 0),
}


@pytest.mark.parametrize("name", list(MODE_CASES))
def test_modes_are_normalised_to_rgb(name, session, settings):
    build, fmt, left, right, tolerance = MODE_CASES[name]
    data = build()
    assert PIL.Image.open(io.BytesIO(data)).mode != "RGB"
    image = store_image(session, data=data, settings=settings)
    stored = open_image(settings, image)
    assert image.format == fmt and stored.mode == "RGB" and stored.size == (16, 16)
    assert PIL.Image.open(image_path(settings, image)).mode == "RGB"  # the file itself is RGB
    assert close_to(stored.getpixel((2, 8)), left, tolerance), stored.getpixel((2, 8))
    assert close_to(stored.getpixel((12, 8)), right, tolerance), stored.getpixel((12, 8))


def test_half_transparent_pixels_are_composited_on_white(session, settings):
    picture = PIL.Image.new("RGBA", (16, 16), (0, 0, 0, 128))
    image = store_image(session, data=encode(picture, "PNG"), settings=settings)
    assert close_to(open_image(settings, image).getpixel((5, 5)), (127, 127, 127), 1)


def test_store_pil_image_normalises_and_matches_store_image(session, settings):
    picture = rgba_picture("RGBA")
    from_memory = store_pil_image(session, image=picture, settings=settings)
    from_file = store_image(session, data=encode(picture, "PNG"), settings=settings)
    assert from_memory.id == from_file.id and from_memory.format == "png"
    assert open_image(settings, from_memory).getpixel((12, 8)) == (0, 0, 255)


def test_encode_png_is_deterministic_and_lossless():
    picture = noise_picture()
    assert encode_png(picture) == encode_png(picture.copy())
    assert PIL.Image.open(io.BytesIO(encode_png(picture))).tobytes() == picture.tobytes()


# --- dedupe and blob writing ------------------------------------------------------------------------------------


def test_same_bytes_twice_give_one_row_and_one_file(session, settings):
    first = store_image(session, data=NOISE_JPEG, settings=settings)
    second = store_image(session, data=NOISE_JPEG, settings=settings)
    assert first.id == second.id and row_count(session) == 1
    assert len([p for p in settings.blob_dir.rglob("*") if p.is_file()]) == 1


def test_same_pixels_in_different_png_encodings_give_one_row(session, settings):
    picture = noise_picture()
    fast = store_image(session, data=encode(picture, "PNG", compress_level=0), settings=settings)
    small = store_image(session, data=encode(picture, "PNG", compress_level=9, optimize=True), settings=settings)
    assert fast.id == small.id and row_count(session) == 1


def test_dedupe_spans_transactions(factory, settings):
    with factory() as session:
        first_id = store_image(session, data=NOISE_PNG, settings=settings).id
        session.commit()
    with factory() as session:
        assert store_image(session, data=NOISE_PNG, settings=settings).id == first_id


def test_store_never_commits_and_an_existing_blob_is_not_rewritten(session, settings):
    image = store_image(session, data=NOISE_PNG, settings=settings)
    path = image_path(settings, image)
    before = path.stat()
    session.rollback()  # the caller owns the transaction: nothing was committed
    assert row_count(session) == 0 and path.exists()  # the orphan blob is harmless and reused
    again = store_image(session, data=NOISE_PNG, settings=settings)
    session.commit()
    after = image_path(settings, again).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert row_count(session) == 1


def test_a_lost_blob_is_restored_when_the_content_comes_again(session, settings, one_image_stored):
    path = image_path(settings, one_image_stored)
    path.unlink()
    assert store_image(session, data=NOISE_PNG, settings=settings).id == one_image_stored.id
    assert hashlib.sha256(path.read_bytes()).hexdigest() == one_image_stored.sha256


def test_a_failed_write_leaves_no_temp_file_and_no_row(session, settings, monkeypatch):
    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(storage.images.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store_image(session, data=NOISE_PNG, settings=settings)
    assert row_count(session) == 0
    assert [p for p in blob_listing(settings) if Path(p).suffix] == []  # at most the empty sha folder


def test_losing_an_insert_race_returns_the_winners_row(factory, settings, monkeypatch):
    with factory() as winner:
        winner_id = store_image(winner, data=NOISE_PNG, settings=settings).id
        winner.commit()
    real_lookup, calls = storage.images._find_image, []

    def stale_first_lookup(session, sha256):  # the loser looked before the winner committed
        calls.append(sha256)
        return None if len(calls) == 1 else real_lookup(session, sha256)

    monkeypatch.setattr(storage.images, "_find_image", stale_first_lookup)
    with factory() as loser:
        assert store_image(loser, data=NOISE_PNG, settings=settings).id == winner_id
        other = store_image(loser, data=encode(noise_picture(seed=5), "PNG"), settings=settings)  # still usable
        loser.commit()
        assert row_count(loser) == 2 and other.id != winner_id
    assert calls[0] == calls[1]  # the insert conflicted and the row was looked up again
