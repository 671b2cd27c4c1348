"""Decoding and resizing shared by every stage, so that training and serving see the same pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps


class UnusableImage(ValueError):
    """A file that cannot become a training image; the message is the reason shown to users."""


def decode_rgb(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Bytes of any common image file → upright RGB uint8 array (H, W, 3).

    ``max_pixels`` is checked against the header before any pixel is decoded, so a
    decompression bomb costs a few bytes of reading, not gigabytes of memory.
    """
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
        try:
            return _to_rgb(image)
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


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square bilinear resize with antialiasing, matching the model's own ``Resizing`` layer.

    PIL's antialiased bilinear and TensorFlow's agree to within one grey level (a test checks
    it), so a raw photo given to the logged model is resized as the training photos were. PIL is
    used here because it is about twice as fast per image and does not queue work on the
    TensorFlow thread pool that the backbone is using at the same moment.
    """
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
