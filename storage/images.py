"""Content-addressed image store: validate an upload, normalise it to upright RGB, keep the bytes on disk.

Accepted: PNG, JPEG and WebP, recognised by their signature bytes (never by file name). Checks run cheapest
first and nothing touches the disk or the session until all of them pass:

1. byte size (`JRM_MAX_UPLOAD_MB`), then an empty file;
2. the signature: PNG/JPEG/WebP go on; GIF, BMP, TIFF, SVG, HEIC/AVIF, ICO, PSD, JPEG 2000 and QOI are named
   as unsupported; anything else (text, HTML, random bytes) is "not an image";
3. the header only (Pillow's plugin parses it lazily): width × height against `JRM_MAX_PIXELS`, each side
   against `JRM_MIN_IMAGE_SIDE`, aspect ratio at most `MAX_ASPECT_RATIO` (50:1; thinner strips are not
   pictures an annotator can judge), and a single frame (animated WebP/APNG are refused);
4. only then are the pixels decoded: a truncated file or a PNG with a bad chunk checksum is refused.
   Lossy JPEG/WebP data carries no checksum, so bytes damaged in the middle of one decode as artefacts.

The header is parsed by the sniffed format's plugin class directly rather than `PIL.Image.open`: `open` also
runs Pillow's process-wide decompression-bomb check (`Image.MAX_IMAGE_PIXELS`: a warning at 89 MP, an error
with Pillow's own wording at 179 MP), which would pre-empt `JRM_MAX_PIXELS` and its message; changing that
global per call is not thread-safe. Only one parser ever sees an upload, not Pillow's forty.
`ImageFile.LOAD_TRUNCATED_IMAGES` must stay False (a `RuntimeError` says so otherwise): with it set, Pillow
silently pads truncated files. WebP's parser allocates (untouched, lazily mapped) canvas memory while reading
the header, before the pixel check; its dimensions are capped at 16383² by the format.

Stored encoding: a JPEG or WebP that already decodes to RGB with no transparency and no EXIF rotation is
kept byte for byte (also with an embedded colour profile that is sRGB in effect: it moves no channel more than
`SRGB_TOLERANCE` levels); everything else (every PNG, CMYK/grayscale/palette JPEG, rotated photos, alpha, other
colour profiles) is re-encoded as PNG of the normalised pixels: a JPEG or WebP is kept exactly when normalising
leaves it as it is. Lossless either way. Normalising applies the EXIF orientation, converts from an embedded ICC
profile (RGB, RGBA, CMYK or gray) to sRGB with LittleCMS, scales 16-bit grayscale to 8 bits, composites
transparency on white, and converts to RGB; the PNG carries no profile, so browsers (which read untagged pictures
as sRGB) and the model see the same colours. A profile that cannot be used (damaged, or for another colour space
than the pixels) is ignored, as browsers ignore it. The row's sha256, width, height, format and byte size describe
the stored bytes, which live at `<blob_dir>/<sha[:2]>/<sha>.<format>`; one row per distinct stored content.

Blobs are written atomically (temp file in the same folder, fsync, `os.replace`) before the row is added, so
a committed row always has its file. A file already at a blob's path is trusted only when its bytes hash to the
blob's sha256 (a file of the right size can still be damaged); anything else is logged and rewritten the same
atomic way. A rolled-back transaction can leave an unreferenced blob behind; it is reused when the same content
comes again, and the garbage collection (`storage.gc`) removes it a day later. Storing holds the blob lock
(`lock_blobs`) until the transaction ends, so the collection never removes a file a transaction in flight is about
to commit a row for.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
from PIL import ExifTags, ImageChops, ImageCms, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import InvalidInput
from storage.models import Image
from storage.settings import Settings

__all__ = [
    "ImageRejected",
    "StoredBlob",
    "decode_upload",
    "encode_png",
    "image_path",
    "lock_blobs",
    "open_image",
    "store_image",
    "store_pil_image",
    "sync_blob_folders",
    "write_upload_blob",
]

log = logging.getLogger(__name__)

MAX_ASPECT_RATIO = 50  # longest side / shortest side
ACCEPTED = "PNG, JPEG or WebP"
MIB = 1024 * 1024

# Only the sniffed format's parser reads an upload (see the module docstring for why not `Image.open`).
_PARSERS: dict[str, type[ImageFile.ImageFile]] = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
}
# What Pillow's parsers and decoders raise on malformed data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)
_UNSUPPORTED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (  # (offset, magic bytes, format name)
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"8BPS", "PSD"),
    (0, b"qoif", "QOI"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypavis", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
)
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}  # DIB header lengths of the BMP versions
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# Stored pixels are sRGB, so annotators' browsers and the model see the same colours. Modes a profile may describe,
# → the mode converted to; a profile whose space does not match the mode is unusable (ignored, as if absent).
_PROFILED_MODES = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB"}
SRGB_TOLERANCE = 2  # levels: an embedded profile that moves no channel further than this counts as sRGB
# Any constant works; it only has to be the same in every process that stores or collects blobs.
_BLOB_LOCK_KEY = 0x4A524D42  # "JRMB"


class ImageRejected(InvalidInput):
    """An upload that is not a storable picture; nothing was written."""


@dataclass(frozen=True)
class StoredBlob:
    """What an image row will say about a blob already on disk (written before the transaction that adds the row)."""

    sha256: str
    format: str
    width: int
    height: int
    byte_size: int


def store_image(session: Session, *, data: bytes, settings: Settings) -> Image:
    """Validate, normalise and store an uploaded file; the same stored content twice returns one row."""
    payload, fmt, size = _stored_encoding(data, settings)
    return _store_payload(session, payload=payload, fmt=fmt, size=size, settings=settings)


def write_upload_blob(*, data: bytes, settings: Settings, touched: set[Path]) -> StoredBlob:
    """Validate and normalise an upload as `store_image` does and write its blob, without a session or a directory
    fsync: the folder is added to `touched`, and `sync_blob_folders(touched)` must run before the transaction that
    adds the rows commits (bulk import: files first, rows after, one directory fsync per folder)."""
    payload, fmt, size = _stored_encoding(data, settings)
    blob = StoredBlob(hashlib.sha256(payload).hexdigest(), fmt, size[0], size[1], len(payload))
    path = blob_path(settings, blob.sha256, fmt)
    if not _write_file(path, payload, blob.sha256):
        os.utime(path)  # a fresh mtime restarts the collection's grace for a file no row references yet
    touched.add(path.parent)
    return blob


def sync_blob_folders(folders: set[Path]) -> None:
    """fsync each folder once, making the renames of `write_upload_blob` durable."""
    for folder in sorted(folders):
        _fsync_directory(folder)


def _stored_encoding(data: bytes, settings: Settings) -> tuple[bytes, str, tuple[int, int]]:
    """(stored bytes, format, size) of a valid upload: the file itself, or PNG of its normalised pixels."""
    fmt, picture = _validated(data, settings)
    upright = _normalise(picture)
    if upright is picture and fmt != "png":  # already opaque, upright sRGB: re-encoding would only grow it
        return data, fmt, picture.size
    return encode_png(upright), "png", upright.size


def decode_upload(data: bytes, *, settings: Settings) -> PIL.Image.Image:
    """Validate an uploaded file exactly as `store_image` does and return its upright RGB pixels; stores nothing."""
    return _normalise(_validated(data, settings)[1])


def store_pil_image(session: Session, *, image: PIL.Image.Image, settings: Settings) -> Image:
    """Store an in-memory picture as PNG of its upright RGB pixels (same limits as `store_image`)."""
    _check_geometry(image, settings)
    upright = _normalise(image)
    return _store_payload(session, payload=encode_png(upright), fmt="png", size=upright.size, settings=settings)


def image_path(settings: Settings, image: Image) -> Path:
    """Where the image's bytes live: `<blob_dir>/<sha[:2]>/<sha>.<format>`."""
    return blob_path(settings, image.sha256, image.format)


def blob_path(settings: Settings, sha256: str, image_format: str) -> Path:
    """`image_path` from the two columns that name the file, for queries that select them rather than `Image`s."""
    return settings.blob_dir / sha256[:2] / f"{sha256}.{image_format}"


def open_image(settings: Settings, image: Image) -> PIL.Image.Image:
    """The stored picture, decoded into memory as RGB (the file is closed on return)."""
    data = image_path(settings, image).read_bytes()
    return _PARSERS[image.format](io.BytesIO(data)).convert("RGB")


def encode_png(picture: PIL.Image.Image) -> bytes:
    """PNG bytes of `picture` (deterministic: the same pixels give the same bytes; no colour profile, the pixels are
    sRGB)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", icc_profile=None)
    return buffer.getvalue()


# --- validation ---------------------------------------------------------------------------------------------


def _validated(data: bytes, settings: Settings) -> tuple[str, ImageFile.ImageFile]:
    """(format, decoded picture) of an upload that passed every check, cheapest first."""
    fmt = _check_file(data, settings)
    picture = _parse_header(data, fmt)
    _check_geometry(picture, settings)
    _decode_pixels(picture, data, fmt)
    return fmt, picture


def _check_file(data: bytes, settings: Settings) -> str:
    """The accepted format (png | jpeg | webp) of `data`, or `ImageRejected` for its size or kind."""
    if len(data) > settings.max_upload_bytes:
        raise ImageRejected(
            f"The file is {len(data) / MIB:.3g} MB, over the {settings.max_upload_mb:g} MB upload limit: "
            "downscale or compress it (an administrator can raise JRM_MAX_UPLOAD_MB)."
        )
    if not data:
        raise ImageRejected(f"The file is empty (0 bytes): choose a {ACCEPTED} image and upload it again.")
    fmt = _accepted_format(data)
    if fmt is not None:
        return fmt
    unsupported = _unsupported_format(data)
    if unsupported is not None:
        raise ImageRejected(
            f"{unsupported} files are not supported: convert the picture to {ACCEPTED} (a single still frame)."
        )
    raise ImageRejected(
        f"The file is not an image (no {ACCEPTED} signature in its first bytes): upload a {ACCEPTED} picture."
    )


def _accepted_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _unsupported_format(data: bytes) -> str | None:
    """The name of a known image format we do not accept, if `data` is one."""
    for offset, magic, name in _UNSUPPORTED_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in head and b"<html" not in head:
        return "SVG"
    return None


def _parse_header(data: bytes, fmt: str) -> ImageFile.ImageFile:
    """The lazily opened picture: its size, mode and frame count are known, no pixel is decoded."""
    if fmt == "webp" and int.from_bytes(data[4:8], "little") + 8 > len(data):
        raise ImageRejected(_truncated_message(fmt))  # the RIFF header states the full length
    try:
        return _PARSERS[fmt](io.BytesIO(data))
    except _DECODE_ERRORS as exc:
        raise ImageRejected(_damaged_message(fmt, exc)) from None


def _check_geometry(picture: PIL.Image.Image, settings: Settings) -> None:
    """Pixel count, smallest side, aspect ratio and frame count, all known before decoding."""
    width, height = picture.size
    if width * height > settings.max_pixels:
        raise ImageRejected(
            f"The image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
            f"{settings.max_pixels / 1e6:g} megapixel limit: downscale it (an administrator can raise "
            "JRM_MAX_PIXELS)."
        )
    if min(width, height) < settings.min_image_side:
        raise ImageRejected(
            f"The image is {width}x{height} pixels; each side must be at least {settings.min_image_side} pixels "
            "(JRM_MIN_IMAGE_SIDE): upload a larger picture."
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageRejected(
            f"The image is {width}x{height} pixels, an aspect ratio over {MAX_ASPECT_RATIO}:1: crop it to a "
            "less elongated picture."
        )
    frames = getattr(picture, "n_frames", 1)
    if frames > 1:
        raise ImageRejected(
            f"The image is animated ({frames} frames): export one still frame as PNG, JPEG or WebP and upload that."
        )


def _decode_pixels(picture: ImageFile.ImageFile, data: bytes, fmt: str) -> None:
    """Decode all pixels, refusing truncated or corrupt data (PNG chunk checksums are verified first)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process; the image store needs it False to "
            "refuse truncated uploads. Remove the code that sets it."
        )
    try:
        if fmt == "png":
            _PARSERS[fmt](io.BytesIO(data)).verify()  # verify() reads chunks without decoding, then is spent
        picture.load()
    except _DECODE_ERRORS as exc:
        raise ImageRejected(_damaged_message(fmt, exc)) from None


def _damaged_message(fmt: str, exc: Exception) -> str:
    if "truncated" in str(exc).lower():
        return _truncated_message(fmt)
    return (
        f"The {fmt.upper()} file is corrupt and cannot be decoded ({exc}): re-export or re-download the picture "
        "and upload it again."
    )


def _truncated_message(fmt: str) -> str:
    return f"The {fmt.upper()} file is truncated (it ends before the image data does): upload the complete file."


# --- normalisation ------------------------------------------------------------------------------------------


def _in_srgb(picture: PIL.Image.Image) -> PIL.Image.Image:
    """`picture` converted from its embedded colour profile to sRGB; `picture` itself when it has no profile, one
    that cannot be used (damaged, or of another colour space than the pixels), or one that is sRGB in effect."""
    icc, target = picture.info.get("icc_profile"), _PROFILED_MODES.get(picture.mode)
    if not icc or target is None:
        return picture
    try:
        # A fresh sRGB profile per call (≈ 0.2 ms), so no LittleCMS profile handle is shared between threads.
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        converted = ImageCms.profileToProfile(
            picture, ImageCms.ImageCmsProfile(io.BytesIO(icc)), srgb, outputMode=target
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return picture  # the pixels are fine without it: stored as if untagged, as browsers would show them
    if converted.mode == picture.mode and _within(converted, picture, SRGB_TOLERANCE):
        return picture
    return converted


def _within(a: PIL.Image.Image, b: PIL.Image.Image, levels: int) -> bool:
    """True when no channel of any pixel differs by more than `levels`."""
    return all(high <= levels for _, high in ImageChops.difference(a, b).getextrema())


def _is_upright(picture: PIL.Image.Image) -> bool:
    """True unless EXIF asks for a rotation or flip (orientation 2..8)."""
    return picture.getexif().get(ExifTags.Base.Orientation, 1) not in range(2, 9)


def _normalise(picture: PIL.Image.Image) -> PIL.Image.Image:
    """Upright sRGB pixels: EXIF orientation and colour profile applied, 16-bit scaled to 8, transparency composited
    on white; `picture` itself when none of that changes anything."""
    if not _is_upright(picture):
        picture = ImageOps.exif_transpose(picture)
    picture = _in_srgb(picture)
    if picture.mode in _SIXTEEN_BIT_MODES:
        # convert("L") would clip 16-bit values at 255; scale the range instead.
        picture = picture.convert("I").point(lambda value: value / 257).convert("L")
    if picture.has_transparency_data:
        rgba = picture.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return picture if picture.mode == "RGB" else picture.convert("RGB")


# --- blobs and rows -----------------------------------------------------------------------------------------


def _store_payload(session: Session, *, payload: bytes, fmt: str, size: tuple[int, int], settings: Settings) -> Image:
    """The row for `payload` (found by sha256, or written to disk and added to the session)."""
    sha256 = hashlib.sha256(payload).hexdigest()
    lock_blobs(session)
    existing = _find_image(session, sha256)
    if existing is not None:
        _write_blob(image_path(settings, existing), payload, sha256)  # restores a lost or damaged file
        return existing
    row = Image(sha256=sha256, width=size[0], height=size[1], format=fmt, byte_size=len(payload))
    _write_blob(image_path(settings, row), payload, sha256)
    try:
        with session.begin_nested():  # a savepoint, so a lost race does not spoil the caller's transaction
            session.add(row)
    except IntegrityError:  # another transaction stored the same content after our lookup
        existing = _find_image(session, sha256)
        if existing is None:
            raise
        return existing
    return row


def _find_image(session: Session, sha256: str) -> Image | None:
    return session.scalars(select(Image).where(Image.sha256 == sha256)).first()


def lock_blobs(session: Session, *, exclusive: bool = False) -> bool:
    """Hold the blob lock until the session's transaction ends: shared while storing, exclusive while the garbage
    collection removes files. `exclusive` does not wait: False when a transaction storing images holds it now.

    PostgreSQL: a transaction-level advisory lock. SQLite: nothing to take, every writing transaction already holds
    the one write lock (`storage.db` begins them with BEGIN IMMEDIATE).
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    if not exclusive:
        session.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": _BLOB_LOCK_KEY})
        return True
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _BLOB_LOCK_KEY}))


def _file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _write_blob(path: Path, payload: bytes, sha256: str) -> None:
    """Write `payload` (whose hash is `sha256`) to `path` atomically; a file already there is left untouched only
    when its bytes hash to `sha256`, else it is logged and replaced."""
    if _write_file(path, payload, sha256):
        _fsync_directory(path.parent)


def _write_file(path: Path, payload: bytes, sha256: str) -> bool:
    """`_write_blob` less the directory fsync; False when a good file was already there (nothing written)."""
    if path.is_file():
        if path.stat().st_size == len(payload) and _file_sha256(path) == sha256:
            return False
        log.warning("blob %s is damaged (its bytes do not hash to its name); rewriting it", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".incoming-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as temp_file:
            temp_file.write(payload)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return True


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX only; Windows cannot open a folder for fsync)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
