"""Reading, decoding and resizing shared by every stage, so that training and serving see the same
pixels, and every path that takes a user's file (ingestion, the stages' loaders, inference, the
served model) applies the same guards: names, file type and size, header size, decodability."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps


class UnusableImage(ValueError):
    """A file that cannot become a training image; the message is the reason shown to users."""


def name_problem(relative: str) -> str | None:
    """Why a file name cannot be stored in CSV, JSON and MLflow as it is, or None."""
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return "unreadable name: not valid UTF-8"
    if any(ord(char) < 32 or ord(char) == 127 for char in relative):
        return "unreadable name: contains control characters"
    return None


def printable(relative: str) -> str:
    """A name that survives JSON and CSV even when the file system's bytes are not UTF-8."""
    return relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device"}


def read_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, or ``UnusableImage`` saying why not.

    The size is checked with ``stat`` before reading, and the read itself stops one byte past
    the limit, so neither a huge file nor one growing while it is read can exhaust memory. Every
    ``OSError`` (permission denied, I/O error, deleted meanwhile) becomes a reason, not a crash.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UnusableImage(
                f"dangling symlink: points to {os.readlink(path)}, which does not exist"
            ) from None
        raise UnusableImage("unreadable: the file disappeared while the folder was read") from None
    except OSError as error:
        raise UnusableImage(f"unreadable: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise UnusableImage(f"not a regular file: {kind}")
    if info.st_size > max_bytes:
        raise UnusableImage(f"too big: {info.st_size} bytes, above ingestion.max_file_bytes = {max_bytes}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as error:
        raise UnusableImage(f"unreadable: {error.strerror or error}") from None
    if len(data) > max_bytes:
        raise UnusableImage(f"too big: grew past ingestion.max_file_bytes = {max_bytes} while read")
    if not data:
        raise UnusableImage("empty file: zero bytes")
    return data


def decode_rgb(
    data: bytes, max_pixels: int | None = None, min_side: int = 1, for_size: int | None = None
) -> np.ndarray:
    """Bytes of any common image file → upright RGB uint8 array (H, W, 3).

    ``max_pixels`` and ``min_side`` are checked against the header before any pixel is decoded,
    so a decompression bomb costs a few bytes of reading, not gigabytes of memory.

    ``for_size``: the photo is only needed ``for_size`` pixels a side (it is resized to that
    next), so a JPEG is decoded at the smallest of 1/1, 1/2, 1/4 and 1/8 scale that keeps both
    sides at least twice that: libjpeg scales in the DCT, skipping most of the work on a large
    photo (benchmarks/README.md, "Camera-sized photos"). Twice, as PIL's ``thumbnail`` does,
    because the resize that follows then still averages several pixels: on demo photos
    enlarged 5 to 7.5 times, the resized pixels differ from a full decode's by 0.6 grey levels on
    average (1.6 when scaling down to the size itself). Every loader passes it, so training,
    inference and serving see the same pixels.
    """
    with _checked(data, max_pixels, min_side) as image:
        if for_size is not None and image.format == "JPEG":
            image.draft("RGB", (2 * for_size, 2 * for_size))
        return _to_rgb(image)


def upright_size(data: bytes, max_pixels: int | None = None, min_side: int = 1) -> tuple[int, int]:
    """(width, height) of a photo once turned upright, after the checks of ``decode_rgb`` and a
    decode of the whole file: what ingestion records. A JPEG is decoded at 1/8 scale, which still
    reads every byte (a truncated file still fails) for a fraction of a full decode's work."""
    with _checked(data, max_pixels, min_side) as image:
        width, height = image.size
        turned = image.getexif().get(ExifTags.Base.Orientation) in _TURNED
        if image.format == "JPEG":
            image.draft("RGB", (1, 1))
        _to_rgb(image)
    return (height, width) if turned else (width, height)


# EXIF orientations that ``ImageOps.exif_transpose`` turns by a quarter (width and height swap).
_TURNED = (5, 6, 7, 8)


@contextmanager
def _checked(data: bytes, max_pixels: int | None, min_side: int) -> Iterator[Image.Image]:
    """The opened image, its header checked; anything that fails while decoding it is unusable."""
    try:
        opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise UnusableImage(f"too large: {error}") from None
    except Image.UnidentifiedImageError:
        raise UnusableImage("not an image: no image format recognised") from None
    except Exception as error:  # PIL raises many types for broken headers
        raise UnusableImage(f"truncated or corrupt: {error}") from None
    with opened as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise UnusableImage(
                f"too large: {image.width}x{image.height} = {image.width * image.height} pixels, "
                f"above ingestion.max_pixels = {max_pixels}"
            )
        if min(image.width, image.height) < min_side:
            raise UnusableImage(
                f"too small: {image.width}x{image.height} px, below ingestion.min_side = {min_side}"
            )
        try:
            yield image
        except Exception as error:
            raise UnusableImage(f"truncated or corrupt: {error}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas of screenshots and product cut-outs are meant to be seen on white.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    elif image.mode.startswith("I"):
        # 16-bit greyscale PNGs open as I or I;16; 257 maps 65535 onto 255 exactly.
        wide = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.round(wide), 0, 255).astype(np.uint8))
    # Palette, greyscale, CMYK and YCbCr all have a PIL conversion to RGB.
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def centre_crop(image: np.ndarray, share: float) -> np.ndarray:
    """The middle ``share`` of each side (at least one pixel); the image itself when ``share`` is 1."""
    if share >= 1.0:
        return image
    height, width = image.shape[:2]
    keep_h, keep_w = max(1, round(height * share)), max(1, round(width * share))
    top, left = (height - keep_h) // 2, (width - keep_w) // 2
    return np.ascontiguousarray(image[top : top + keep_h, left : left + keep_w])


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square bilinear resize with antialiasing, matching the model's own ``Resizing`` layer.

    PIL's antialiased bilinear and TensorFlow's agree to within one grey level (a test checks
    it), so a raw photo given to the logged model is resized as the training photos were. PIL is
    used here because it is about twice as fast per image and does not queue work on the
    TensorFlow thread pool that the backbone is using at the same moment.
    """
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
