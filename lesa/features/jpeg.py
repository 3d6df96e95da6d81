"""Image bytes -> uint8 RGB array, bit-identical to TF1's ``tf.image.decode_jpeg(data, channels=3)``.

TF1: libjpeg's JDCT_IFAST + fancy upsampling = simplejpeg ``fastdct=True, fastupsample=False``
(bit for bit on the golden images); grey JPEGs give 3 equal channels. TF1: the kernel also decoded
PNG data (Flickr placeholders named .jpg): libpng through torchvision, with TF's transformations.
TF1 turned GIFs into 4-D arrays the preprocessing rejected: GIFs, CMYK/YCCK, truncated, corrupt,
empty and over-``max_pixels`` images raise ``ImageError``.
"""
from __future__ import annotations

import warnings

import numpy as np

from lesa.errors import ImageError

# larger images are refused (decompression bombs); Open Images originals are at most ~20 Mpx
MAX_PIXELS = 100_000_000


class ImageDecodeError(ImageError):
    """An unusable image; ``reason``: empty, not_image, gif, cmyk, too_large, truncated, corrupt."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def image_format(data: bytes) -> str:
    """'jpeg', 'png', 'gif' or 'unknown' from the magic bytes (as TF's kernel classified them)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "unknown"


def decode_jpeg(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image bytes -> uint8 (H, W, 3) as TF1's ``decode_jpeg(channels=3)``; ``name`` is for errors."""
    data = bytes(data) if not isinstance(data, bytes) else data
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes); re-download the image", "empty")
    kind = image_format(data)
    if kind == "jpeg":
        return _decode_jpeg_bytes(data, name, max_pixels)
    if kind == "png":
        return _decode_png_bytes(data, name, max_pixels)
    if kind == "gif":
        raise ImageDecodeError(f"{name}: GIF data; TF1's decode_jpeg returned 4-D frames for GIFs and "
                               "the original extraction failed on them. Convert it to JPEG to include it",
                               "gif")
    raise ImageDecodeError(f"{name}: not a JPEG/PNG image (first bytes {data[:8]!r}); re-download the image",
                           "not_image")


def _decode_jpeg_bytes(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    import simplejpeg

    try:
        height, width, colorspace, _sub = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError) as exc:
        raise ImageDecodeError(f"{name}: corrupt JPEG header ({exc}); re-download the image", "corrupt") from exc
    if colorspace in ("CMYK", "YCCK"):
        raise ImageDecodeError(f"{name}: {colorspace} JPEG is not supported; convert it to RGB "
                               "(e.g. `convert in.jpg -colorspace sRGB out.jpg`)", "cmyk")
    _check_size(height, width, name, max_pixels)
    # TF1: JDCT_IFAST + fancy upsampling = fastdct=True, fastupsample=False
    options = dict(colorspace="RGB", fastdct=True, fastupsample=False)
    try:
        image = simplejpeg.decode_jpeg(data, strict=True, **options)
    except (ValueError, RuntimeError) as exc:
        message = str(exc)
        # TF1: a truncated stream ("Premature end") failed with "Invalid JPEG data"; other libjpeg
        # warnings (e.g. extraneous bytes) were only logged and the image was used.
        if "Premature end" in message:
            raise ImageDecodeError(f"{name}: truncated JPEG ({message}); re-download the image", "truncated") from exc
        try:
            image = simplejpeg.decode_jpeg(data, strict=False, **options)
        except (ValueError, RuntimeError) as exc2:
            raise ImageDecodeError(f"{name}: cannot decode JPEG ({exc2}); the file is corrupt — "
                                   "re-download it", "corrupt") from exc2
    return image


def _decode_png_bytes(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_png

    if len(data) >= 24:  # IHDR width, height (big endian), right after the signature + chunk header
        _check_size(int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big"), name, max_pixels)
    try:
        with warnings.catch_warnings():  # torchvision 0.29 flags its image codecs as deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            tensor = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot decode PNG ({exc}); the file is truncated or corrupt",
                               "corrupt") from exc
    image = tensor.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    if image.dtype != np.uint8:  # 16-bit PNG: libpng's strip_16 keeps the high byte
        image = (image.astype(np.uint32) >> 8).astype(np.uint8)
    return np.ascontiguousarray(image)


def _check_size(height: int, width: int, name: str, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"{name}: invalid image size {width}x{height}", "corrupt")
    if height * width > max_pixels:
        raise ImageDecodeError(f"{name}: image of {width}x{height} pixels exceeds the limit of {max_pixels} "
                               "(--max-pixels); downscale it or raise the limit", "too_large")
