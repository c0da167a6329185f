"""Deterministic test images: coloured shapes on textured backgrounds, and a table of bad inputs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def scene(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """An RGB image with a gradient background and a few filled shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                     np.full_like(x, rng.integers(0, 255))], axis=-1).astype(np.uint8)
    img = base.copy()
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = int(rng.integers(10, max(11, min(width, height) // 3)))
        color = rng.integers(0, 255, size=3)
        disk = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[disk] = color
    return Image.fromarray(img)


def write_scenes(folder: Path, n: int, *, start: int = 0, fmt: str = "jpg") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img_{i:04d}.{fmt}"
        scene(i).save(p)
        paths.append(p)
    return paths


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but carries almost no data (a bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(
        b"IEND", b"")


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def bad_inputs() -> dict[str, bytes]:
    """Name -> file bytes, one per awkward input the pipeline must survive."""
    rgb = scene(7, 64, 48)
    jpeg = _save(rgb, "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    gif_frames = [scene(i, 40, 30).convert("P") for i in range(3)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, "GIF", save_all=True, append_images=gif_frames[1:])
    tiff = io.BytesIO()
    scene(1, 40, 30).save(tiff, "TIFF", save_all=True, append_images=[scene(2, 40, 30)])
    sixteen = Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16))
    return {
        "zero_byte.jpg": b"",
        "not_an_image.jpg": b"hello, this is plain text and not a picture\n" * 10,
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "bomb.png": _png_header_only(20000, 20000),
        "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
        "sixteen_bit.png": _save(sixteen, "PNG"),
        "palette.png": _save(rgb.convert("P"), "PNG"),
        "rgba.png": _save(rgb.convert("RGBA"), "PNG"),
        "grayscale.png": _save(rgb.convert("L"), "PNG"),
        "exif_rotated.jpg": _save(rgb, "JPEG", exif=exif),
        "animated.gif": gif.getvalue(),
        "multipage.tif": tiff.getvalue(),
        "one_pixel.png": _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "one_by_10000.png": _save(Image.new("RGB", (10000, 1), (10, 200, 10)), "PNG"),
    }
