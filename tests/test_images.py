import keras
import numpy as np
import pytest
from PIL import Image

from conftest import encode, exif_rotated_jpeg, png_claiming
from image_classifier.images import UnusableImage, decode_rgb, resize


def test_modes_become_rgb_uint8():
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent red
    sixteen = Image.fromarray(np.full((30, 40), 257 * 200, np.uint16))
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red in CMYK
    palette = Image.new("RGB", (40, 30), (10, 120, 250)).convert("P", palette=Image.Palette.ADAPTIVE)
    grey = Image.new("L", (40, 30), 77)
    cases = {
        "alpha on white": (encode(rgba), (255, 255, 255)),
        "16-bit grey": (encode(sixteen), (200, 200, 200)),
        "CMYK JPEG": (encode(cmyk, "JPEG", quality=100), (255, 0, 0)),
        "palette": (encode(palette), (10, 120, 250)),
        "greyscale": (encode(grey), (77, 77, 77)),
    }
    for name, (data, expected) in cases.items():
        image = decode_rgb(data)
        assert image.dtype == np.uint8 and image.shape == (30, 40, 3), name
        assert np.abs(image[15, 20].astype(int) - expected).max() <= 3, name


def test_exif_orientation_is_applied():
    assert decode_rgb(exif_rotated_jpeg(60, 40)).shape == (60, 40, 3)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    bomb = png_claiming(9000, 9000)
    with pytest.raises(UnusableImage, match=r"too large: 9000x9000 = 81000000 pixels"):
        decode_rgb(bomb, max_pixels=64_000_000)
    # Without the limit the same file gets as far as decoding, and fails there.
    with pytest.raises(UnusableImage, match="truncated or corrupt"):
        decode_rgb(bomb)
    with pytest.raises(UnusableImage, match="too large"):
        decode_rgb(png_claiming(20000, 20000))  # beyond PIL's own bomb guard


def test_non_images_and_truncated_files_are_unusable():
    with pytest.raises(UnusableImage, match="not an image"):
        decode_rgb(b"just some text")
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    for jpeg in (encode(Image.fromarray(noise), "JPEG"), encode(Image.new("RGB", (64, 64)), "JPEG")):
        # Cut in the pixel data, and cut in the headers: both are truncated, not "not an image".
        with pytest.raises(UnusableImage, match="truncated or corrupt"):
            decode_rgb(jpeg[: len(jpeg) // 2])


def test_resize_matches_the_models_own_resizing_layer(tiny_demo):
    layer = keras.layers.Resizing(96, 96, interpolation="bilinear", antialias=True)
    for photo in sorted((tiny_demo / "train" / "hat").iterdir())[:4]:
        image = decode_rgb(photo.read_bytes())
        in_model = layer(image[None].astype("float32"))[0].numpy()
        assert np.abs(resize(image, 96).astype(float) - in_model).max() <= 1.0
