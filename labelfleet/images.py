"""Image bytes -> upright RGB uint8 array, with a clear error for every bad input.

Pure Pillow + numpy. The returned array is ``(H, W, 3)`` uint8 in the
*upright* frame (EXIF orientation applied), so every label is in the frame a
person sees. Multi-frame files (animated GIF, multi-page TIFF) use frame 0.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from labelfleet.errors import BadImageError
from labelfleet.types import RGBImage

#: Extensions a folder or bucket listing treats as images (lower-case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jfif", ".pbm", ".pgm", ".ppm"}
)
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
#: Formats read through a plugin or an optional Pillow codec, listed only when it is available.
OPTIONAL_EXTENSIONS = {".avif": "avif", ".avifs": "avif", ".heic": "heif", ".heif": "heif"}
_PLUGINS: dict[str, bool] = {}


def format_available(kind: str) -> bool:
    """Whether ``"avif"`` (Pillow's own codec) or ``"heif"`` (the ``pillow-heif`` plugin) can be decoded."""
    if kind not in _PLUGINS:
        if kind == "avif":
            from PIL import features

            _PLUGINS[kind] = bool(features.check("avif"))
        else:
            try:
                import pillow_heif

                pillow_heif.register_heif_opener()
                _PLUGINS[kind] = True
            except ImportError:
                _PLUGINS[kind] = False
    return _PLUGINS[kind]


def unsupported_reason(key: str) -> str:
    """Why a listing skips ``key``: ``"unsupported format"``, or which plugin would read it."""
    ext = key[key.rfind("."):].lower() if "." in key else ""
    if OPTIONAL_EXTENSIONS.get(ext) == "heif":
        return "unsupported format (HEIC/HEIF needs pillow-heif)"
    if OPTIONAL_EXTENSIONS.get(ext) == "avif":
        return "unsupported format (this Pillow has no AVIF codec)"
    return "unsupported format"


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and facts about the source bytes."""

    array: RGBImage  # (H, W, 3) uint8, upright
    sha256: str  # of the raw bytes
    size: int  # bytes
    source_mode: str  # Pillow mode before conversion, e.g. "CMYK", "I;16", "P"
    frames: int  # 1 for still images

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        return int(self.array.shape[0])


def decode_image(data: bytes, *, max_pixels: int = 100_000_000) -> DecodedImage:
    """Decode raw bytes into an upright RGB array.

    Raises:
        BadImageError: empty file, not an image, truncated/corrupt data, or
            more than ``max_pixels`` pixels (decompression bomb). The message
            says which, so it can be stored as the item's failure reason.
    """
    if len(data) == 0:
        raise BadImageError("empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = _open(data, max_pixels)
        frames = int(getattr(img, "n_frames", 1) or 1)
        mode = img.mode
        try:
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            array = _to_rgb(img)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise BadImageError(f"truncated or corrupt image data ({exc})") from exc
    return DecodedImage(array=array, sha256=digest, size=len(data), source_mode=mode, frames=frames)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    format_available("heif")  # registers the HEIC/HEIF opener once, when pillow-heif is installed
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # the user raised our limit: let Pillow follow (never lowered)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise BadImageError("not an image: the data is in no format Pillow can read") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise BadImageError(_too_large(int(found.group(1)) if found else -1, max_pixels)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"truncated or corrupt image data ({exc})") from exc
    w, h = img.size
    if w < 1 or h < 1:
        raise BadImageError(f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise BadImageError(_too_large(w * h, max_pixels))
    return img


#: Peak memory per megapixel while one photo is labelled (decoded RGB, Pillow copies, resize inputs; masks are
#: box-cropped records): 48 MP peaked 515 MB above 1 MP in ``python -m benchmarks.memory`` (11 B/pixel).
_MB_PER_MEGAPIXEL = 11


def _too_large(pixels: int, max_pixels: int) -> str:
    return (f"image too large: {pixels:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb; raise LABELFLEET_MAX_IMAGE_PIXELS to allow it: labelling costs "
            f"about {_MB_PER_MEGAPIXEL} MB of memory per megapixel on top of the models"
            + (f", ~{pixels * _MB_PER_MEGAPIXEL / 1e6 / 1024:.1f} GB for this one)" if pixels > 0 else ")"))


def _to_rgb(img: Image.Image) -> RGBImage:
    """Convert any Pillow mode to (H, W, 3) uint8 RGB.

    16-bit and 32-bit integer data are scaled (not clipped) to 8 bits; alpha
    is composited onto white; palette and grayscale are expanded.
    """
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode in _SIXTEEN_BIT or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
            arr, top = arr - lo, max(hi - lo, 1e-12)
        gray = np.clip(np.rint(arr * 255.0 / top), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb)


def is_image_key(key: str) -> bool:
    """True when ``key`` ends in a known image extension (case-insensitive)."""
    dot = key.rfind(".")
    if dot < 0:
        return False
    ext = key[dot:].lower()
    return ext in IMAGE_EXTENSIONS or (ext in OPTIONAL_EXTENSIONS and format_available(OPTIONAL_EXTENSIONS[ext]))
