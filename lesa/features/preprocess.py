"""TF-slim ``vgg_preprocessing`` eval path in torch (the same code on the CPU and the GPU):

1. short side resized to 256, TF1: size in float32, ``new = rint(side * (256 / short_side))``;
2. TF1 ``resize_bilinear(align_corners=False)``: legacy sampling ``y_in = y_out * (in / out)`` in
   float32, ``top = tl + (tr - tl) * dx; bottom = ...; out = top + (bottom - top) * dy``;
3. central 224 x 224 crop at ``(new - 224) // 2``; 4. minus the RGB means. Only the cropped samples
are interpolated, from the window they read (``pack_crops``). Output (3, 224, 224) (goldens: HWC).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lesa.errors import ImageError

RESIZE_SIDE = 256
CROP_SIZE = 224
RGB_MEAN = (123.68, 116.78, 103.94)
PLAN_KEYS = ("rows_lo", "rows_hi", "dy", "cols_lo", "cols_hi", "dx")


def resized_size(height: int, width: int, smallest_side: int = RESIZE_SIDE) -> tuple[int, int]:
    """TF-slim ``_smallest_size_at_least``: (height, width) after the aspect-preserving resize."""
    h, w, side = np.float32(height), np.float32(width), np.float32(smallest_side)
    scale = side / w if h > w else side / h  # TF1: float32 arithmetic
    return int(np.rint(h * scale)), int(np.rint(w * scale))


def _sample_positions(in_size: int, out_size: int, start: int, count: int):
    """TF1 legacy bilinear sampling of output positions ``start .. start+count-1`` on one axis:
    (lower (count,) int64, upper (count,) int64, lerp (count,) float32)."""
    scale = np.float32(in_size) / np.float32(out_size)  # TF1: CalculateResizeScale, float32
    pos = np.arange(start, start + count, dtype=np.float32) * scale
    lower = pos.astype(np.int64)  # TF1: static_cast<int64>, a floor for pos >= 0
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (pos - lower.astype(np.float32)).astype(np.float32)


def crop_plan(height: int, width: int, resize_side: int = RESIZE_SIDE, crop: int = CROP_SIZE):
    """The source rows and columns that resize + central crop sample: ``(rows, cols)``, each
    ``(lower, upper, lerp)`` of length ``crop``."""
    if height < 1 or width < 1:
        raise ImageError(f"cannot preprocess an image of size {width}x{height}")
    new_h, new_w = resized_size(height, width, resize_side)
    if new_h < crop or new_w < crop:
        raise ImageError(f"image of {width}x{height} resizes to {new_w}x{new_h}, smaller than the "
                         f"{crop}x{crop} crop")
    # TF-slim: offset (new - crop) / 2 cast to int32, a floor for these sizes
    return (_sample_positions(height, new_h, (new_h - crop) // 2, crop),
            _sample_positions(width, new_w, (new_w - crop) // 2, crop))


def pack_crops(images: Sequence) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """uint8 (H, W, 3) images (arrays or tensors) -> ``(pixels, plan)``: ``pixels`` (n,) the windows
    their samples read, one after the other; ``plan``: (B, 224) offsets into it of each sample's
    source rows (``rows_lo/hi``) and columns * 3 (``cols_lo/hi``), and the lerps ``dy``/``dx``."""
    windows, plan, offset = [], {key: [] for key in PLAN_KEYS}, 0
    for image in images:
        image = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(f"expected a uint8 (H, W, 3) image, got {tuple(image.shape)} {image.dtype}")
        (y_lo, y_hi, dy), (x_lo, x_hi, dx) = crop_plan(image.shape[0], image.shape[1])
        r0, c0 = int(y_lo.min()), int(x_lo.min())
        window = image[r0:int(y_hi.max()) + 1, c0:int(x_hi.max()) + 1]
        row_bytes = window.shape[1] * 3
        parts = (offset + (y_lo - r0) * row_bytes, offset + (y_hi - r0) * row_bytes, dy, (x_lo - c0) * 3,
                 (x_hi - c0) * 3, dx)  # in PLAN_KEYS' order
        for key, part in zip(PLAN_KEYS, parts):
            plan[key].append(part)
        windows.append(window.reshape(-1))
        offset += window.numel()
    if not windows:
        return torch.empty(0, dtype=torch.uint8), {}
    return torch.cat(windows), {key: torch.from_numpy(np.stack(v)) for key, v in plan.items()}


def vgg_preprocess_packed(pixels: torch.Tensor, plan: dict[str, torch.Tensor], device=None) -> torch.Tensor:
    """``pack_crops`` output -> float32 (B, 3, 224, 224) on ``device`` (default: ``pixels``'s)."""
    device = pixels.device if device is None else torch.device(device)
    if not plan:
        return torch.empty((0, 3, CROP_SIZE, CROP_SIZE), dtype=torch.float32, device=device)
    pixels = pixels.to(device, non_blocking=True)
    p = {key: value.to(device, non_blocking=True) for key, value in plan.items()}
    channel = torch.arange(3, device=device)

    def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:  # (B, 224, 224, 3) float32
        return pixels[rows[:, :, None, None] + cols[:, None, :, None] + channel].to(torch.float32)

    dx, dy = p["dx"][:, None, :, None], p["dy"][:, :, None, None]
    top_left, top_right = corner(p["rows_lo"], p["cols_lo"]), corner(p["rows_lo"], p["cols_hi"])
    top = top_left + (top_right - top_left) * dx  # TF1: compute_lerp in float32
    del top_left, top_right
    bottom_left, bottom_right = corner(p["rows_hi"], p["cols_lo"]), corner(p["rows_hi"], p["cols_hi"])
    bottom = bottom_left + (bottom_right - bottom_left) * dx
    del bottom_left, bottom_right
    resized = top + (bottom - top) * dy
    mean = torch.tensor(RGB_MEAN, dtype=torch.float32, device=device)
    return (resized - mean).permute(0, 3, 1, 2).contiguous()


def vgg_preprocess_batch(images: Sequence, device=None) -> torch.Tensor:
    """uint8 (H, W, 3) images of any sizes -> float32 (B, 3, 224, 224) on ``device`` (default theirs)."""
    pixels, plan = pack_crops(images)
    return vgg_preprocess_packed(pixels, plan, device)


def vgg_preprocess(image, device=None) -> torch.Tensor:
    """One uint8 (H, W, 3) image -> float32 (3, 224, 224)."""
    return vgg_preprocess_batch([image], device=device)[0]
