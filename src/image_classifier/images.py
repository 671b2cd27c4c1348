"""Decoding and resizing shared by every stage, so that training and serving see the same pixels."""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps


def decode_rgb(data: bytes) -> np.ndarray:
    """Bytes of any common image file → upright RGB uint8 array (H, W, 3)."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        elif image.mode.startswith("I"):
            # 16-bit PNGs open as I or I;16; 257 maps 65535 onto 255 exactly.
            wide = np.asarray(image, dtype=np.float64) / 257.0
            image = Image.fromarray(np.clip(np.round(wide), 0, 255).astype(np.uint8))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square bilinear resize with antialiasing, as the model's own ``Resizing`` layer does.

    Using TensorFlow's kernel here too means a raw photo given to the logged model is
    resized the same way as the photos the model was trained on.
    """
    resized = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
