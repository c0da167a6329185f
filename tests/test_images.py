"""Decoding: every awkward input is either an upright RGB array or a BadImageError with a clear reason."""

from __future__ import annotations

import pytest

from labelfleet.errors import BadImageError
from labelfleet.images import decode_image, is_image_key
from tests.imagegen import bad_inputs

INPUTS = bad_inputs()

# name -> expected (height, width) of the decoded array, or the start of the error message
EXPECTED: list[tuple[str, tuple[int, int] | str]] = [
    ("zero_byte.jpg", "empty file (0 bytes)"),
    ("not_an_image.jpg", "not an image: the data is in no format Pillow can read"),
    ("truncated.jpg", "truncated or corrupt image data"),
    ("bomb.png", "image too large: 400,000,000 pixels exceeds the limit of 100,000,000"),
    ("cmyk.jpg", (48, 64)),
    ("sixteen_bit.png", (48, 64)),
    ("palette.png", (48, 64)),
    ("rgba.png", (48, 64)),
    ("grayscale.png", (48, 64)),
    ("exif_rotated.jpg", (64, 48)),  # upright frame: width and height swap
    ("animated.gif", (30, 40)),
    ("multipage.tif", (30, 40)),
    ("one_pixel.png", (1, 1)),
    ("one_by_10000.png", (1, 10000)),
]


def test_table_covers_every_generated_input() -> None:
    assert {name for name, _ in EXPECTED} == set(INPUTS)


@pytest.mark.parametrize(("name", "expected"), EXPECTED, ids=[n for n, _ in EXPECTED])
def test_decode(name: str, expected: tuple[int, int] | str) -> None:
    data = INPUTS[name]
    if isinstance(expected, str):
        with pytest.raises(BadImageError) as info:
            decode_image(data)
        assert info.value.message.startswith(expected), info.value.message
        return
    out = decode_image(data)
    assert out.array.dtype.name == "uint8"
    assert out.array.shape == (*expected, 3)
    assert out.size == len(data) and len(out.sha256) == 64


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    out = decode_image(INPUTS["sixteen_bit.png"])
    # values run 0..61420 in 16 bits; clipping would make almost every pixel 255
    assert (out.array[..., 0] == 255).mean() < 0.05
    assert out.array[..., 0].max() > 200


def test_rgba_composited_on_white() -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(buf, "PNG")
    assert (decode_image(buf.getvalue()).array == 255).all()


def test_exif_rotation_is_applied() -> None:
    import io

    import numpy as np
    from PIL import Image

    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", exif=exif)
    out = decode_image(buf.getvalue()).array
    assert out.shape == (40, 20, 3)
    assert out[:10].mean() > 200 and out[20:].mean() < 50  # stripe now on top


def test_pixel_limit_is_configurable() -> None:
    with pytest.raises(BadImageError, match="exceeds the limit of 100"):
        decode_image(INPUTS["cmyk.jpg"], max_pixels=100)


@pytest.mark.parametrize(("key", "ok"), [("a.JPG", True), ("b/c.png", True), ("x.txt", False), ("noext", False),
                                         ("d.tiff", True), ("e.webp", True)])
def test_is_image_key(key: str, ok: bool) -> None:
    assert is_image_key(key) is ok
