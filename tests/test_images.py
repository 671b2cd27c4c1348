import keras
import numpy as np
import pytest
from PIL import Image

from conftest import encode, exif_rotated_jpeg, png_claiming
from image_classifier.images import UnusableImage, centre_crop, decode_rgb, resize, upright_size


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


def test_a_large_jpeg_is_decoded_at_the_scale_its_resize_needs(tiny_demo):
    photo = sorted((tiny_demo / "train" / "hat").iterdir())[0]
    with Image.open(photo) as small:
        large = small.convert("RGB").resize((small.width * 5, small.height * 5), Image.Resampling.BICUBIC)
    data = encode(large, "JPEG", quality=95)
    full = decode_rgb(data)
    drafted = decode_rgb(data, for_size=96)
    assert full.shape[:2] == (large.height, large.width)
    # The smallest libjpeg scale (1/8 here) that keeps both sides at least twice 96 pixels.
    scale = next(s for s in (8, 4, 2, 1) if s <= min(large.width // 192, large.height // 192))
    assert scale == 8 and drafted.shape[:2] == (-(-large.height // scale), -(-large.width // scale))
    # After the resize that follows, the two differ by under a grey level on average.
    difference = np.abs(resize(drafted, 96).astype(int) - resize(full, 96).astype(int))
    assert difference.mean() < 1.0 and difference.max() <= 24
    # A photo the size asks nothing of, a PNG, and EXIF orientation are as without it.
    original = decode_rgb(photo.read_bytes())
    assert np.array_equal(decode_rgb(photo.read_bytes(), for_size=min(original.shape[:2])), original)
    assert np.array_equal(decode_rgb(encode(large), for_size=96), np.asarray(large))
    assert decode_rgb(exif_rotated_jpeg(1600, 800), for_size=96).shape == (400, 200, 3)
    with pytest.raises(UnusableImage, match="truncated or corrupt"):
        decode_rgb(data[: len(data) // 2], for_size=96)


def test_ingestion_reads_the_upright_size_of_a_whole_decode(tiny_demo):
    photo = sorted((tiny_demo / "train" / "hat").iterdir())[0]
    with Image.open(photo) as small:
        large = encode(small.resize((small.width * 4, small.height * 4)), "JPEG")
    for data in (photo.read_bytes(), large, exif_rotated_jpeg(1600, 800), encode(Image.new("RGB", (30, 50)))):
        height, width = decode_rgb(data).shape[:2]
        assert upright_size(data) == (width, height)
    with pytest.raises(UnusableImage, match="truncated or corrupt"):
        upright_size(large[: len(large) // 2])
    with pytest.raises(UnusableImage, match="too small"):
        upright_size(large, min_side=10_000)


def test_the_centre_crop_keeps_the_middle_share_of_each_side():
    image = np.zeros((100, 60, 3), np.uint8)
    image[5:95, 3:57] = 200  # the middle 90% of each side
    middle = centre_crop(image, 0.9)
    assert middle.shape == (90, 54, 3) and (middle == 200).all() and middle.flags["C_CONTIGUOUS"]
    assert centre_crop(image, 1.0) is image
    assert centre_crop(image[:1, :1], 0.5).shape == (1, 1, 3)
