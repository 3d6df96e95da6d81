"""TF-slim ``vgg_preprocessing`` eval path, in torch (same code on CPU and GPU, single or batched).

Steps (TF-slim ``preprocess_for_eval`` with resize side 256 and output 224):

1. aspect-preserving resize so that the short side is 256. TF1: the new size is computed in
   float32 — ``scale = 256 / short_side`` and ``new = rint(side * scale)`` (round half to even);
2. TF1 ``resize_bilinear(align_corners=False)`` (the legacy sampling without half-pixel centres:
   source coordinate ``y_in = y_out * (in_size / out_size)``, all in float32, interpolated as
   ``top = tl + (tr - tl) * dx; bottom = bl + (br - bl) * dx; out = top + (bottom - top) * dy``);
3. central crop 224 x 224 at offset ``(new - 224) // 2``;
4. subtraction of the RGB means (123.68, 116.78, 103.94).

Only the 224 x 224 window that survives the crop is interpolated (the same numbers, less work).
The result is channel-first float32 ``(3, 224, 224)``; the golden references are HWC.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lesa.errors import ImageError

RESIZE_SIDE = 256
CROP_SIZE = 224
RGB_MEAN = (123.68, 116.78, 103.94)


def resized_size(height: int, width: int, smallest_side: int = RESIZE_SIDE) -> tuple[int, int]:
    """TF-slim ``_smallest_size_at_least``: the (height, width) after the aspect-preserving resize."""
    h, w, side = np.float32(height), np.float32(width), np.float32(smallest_side)
    # TF1: float32 arithmetic; scale from the smaller side (width when height > width)
    scale = side / w if h > w else side / h
    return int(np.rint(h * scale)), int(np.rint(w * scale))


def _sample_positions(in_size: int, out_size: int, start: int, count: int):
    """TF1 legacy bilinear sampling for output positions ``start .. start+count-1`` of one axis.

    Returns ``(lower (count,) int64, upper (count,) int64, lerp (count,) float32)``.
    """
    scale = np.float32(in_size) / np.float32(out_size)  # TF1: CalculateResizeScale, float32
    pos = np.arange(start, start + count, dtype=np.float32) * scale
    lower = pos.astype(np.int64)  # TF1: static_cast<int64>(in), a floor for in >= 0
    upper = np.minimum(lower + 1, in_size - 1)
    lerp = (pos - lower.astype(np.float32)).astype(np.float32)
    return lower, upper, lerp


def crop_plan(height: int, width: int, resize_side: int = RESIZE_SIDE, crop: int = CROP_SIZE):
    """Sampling rows/columns of the resize+crop for an image of ``height`` x ``width``.

    Returns ``(rows, cols)``, each ``(lower, upper, lerp)`` arrays of length ``crop``.
    """
    if height < 1 or width < 1:
        raise ImageError(f"cannot preprocess an image of size {width}x{height}")
    new_h, new_w = resized_size(height, width, resize_side)
    if new_h < crop or new_w < crop:
        raise ImageError(f"image of {width}x{height} resizes to {new_w}x{new_h}, smaller than the "
                         f"{crop}x{crop} crop")
    # TF-slim: offset (new - crop) / 2 cast to int32, a floor for these non-negative sizes
    off_h, off_w = (new_h - crop) // 2, (new_w - crop) // 2
    return (_sample_positions(height, new_h, off_h, crop), _sample_positions(width, new_w, off_w, crop))


def batch_plan(sizes: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """``crop_plan`` of every image, stacked: y_lo, y_hi, x_lo, x_hi (B, 224) int64, dy, dx (B, 224)
    float32."""
    return _stack_plans([crop_plan(h, w) for h, w in sizes])


def _stack_plans(plans) -> dict[str, torch.Tensor]:
    if not plans:
        return {k: torch.empty((0, CROP_SIZE), dtype=torch.float32 if k in ("dy", "dx") else torch.int64)
                for k in ("y_lo", "y_hi", "dy", "x_lo", "x_hi", "dx")}
    out = {}
    for axis, (lo, hi, lerp) in (("y", ("y_lo", "y_hi", "dy")), ("x", ("x_lo", "x_hi", "dx"))):
        which = 0 if axis == "y" else 1
        for part, key in enumerate((lo, hi, lerp)):
            out[key] = torch.from_numpy(np.stack([p[which][part] for p in plans]))
    return out


def _window(axis_plan) -> tuple[int, int, tuple]:
    """(first, stop, plan shifted to start at ``first``) of the source rows (or columns) that one
    axis of the resize+crop reads."""
    lower, upper, lerp = axis_plan
    first, stop = int(lower.min()), int(upper.max()) + 1
    return first, stop, (lower - first, upper - first, lerp)


def pack_crops(images: Sequence[np.ndarray], alloc=None):
    """Pack only the pixels the resize + central crop reads: for each uint8 (H, W, 3) image the
    window of rows and columns its bilinear samples touch (about 60% of a 500 x 375 photo).

    Returns ``(flat (sum h*w*3,) uint8, [(h, w) of each stored window], plan)`` where ``plan`` is
    ``batch_plan``'s dict with indices relative to the stored windows, for ``vgg_preprocess_packed``:
    the same numbers as preprocessing the whole images. ``alloc(n)`` makes the uint8 output (the
    extraction workers allocate it in shared memory, so the batch crosses to the main process
    without another copy). Raises ``ImageError`` for an image the crop cannot take."""
    alloc = alloc or (lambda n: torch.empty(n, dtype=torch.uint8))
    windows, plans = [], []
    for image in images:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(f"expected a uint8 (H, W, 3) image, got {image.shape} {image.dtype}")
        rows, cols = crop_plan(image.shape[0], image.shape[1])
        r0, r1, rows = _window(rows)
        c0, c1, cols = _window(cols)
        windows.append((r0, r1, c0, c1))
        plans.append((rows, cols))
    sizes = [(r1 - r0, c1 - c0) for r0, r1, c0, c1 in windows]
    flat = alloc(sum(h * w * 3 for h, w in sizes))
    out, offset = flat.numpy(), 0
    for image, (r0, r1, c0, c1), (h, w) in zip(images, windows, sizes):
        out[offset:offset + h * w * 3].reshape(h, w, 3)[:] = image[r0:r1, c0:c1]
        offset += h * w * 3
    return flat, sizes, _stack_plans(plans)


def _as_uint8_tensor(image, device) -> torch.Tensor:
    t = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[2] != 3:
        raise ImageError(f"expected a uint8 (H, W, 3) image, got {tuple(t.shape)} {t.dtype}")
    return t.to(device, non_blocking=True)


def vgg_preprocess_batch(images: Sequence, device=None) -> torch.Tensor:
    """Preprocess uint8 (H, W, 3) images of any sizes into one float32 batch (B, 3, 224, 224).

    ``images`` are numpy arrays or tensors (CPU or GPU); the work happens on ``device`` (default:
    the first image's device) with one gather per bilinear corner for the whole batch.
    """
    if len(images) == 0:
        return torch.empty((0, 3, CROP_SIZE, CROP_SIZE), dtype=torch.float32, device=device)
    if device is None:
        device = images[0].device if isinstance(images[0], torch.Tensor) else torch.device("cpu")
    flat, sizes = pack_images(images)
    return vgg_preprocess_packed(flat, sizes, device)


def pack_images(images: Sequence) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """uint8 (H, W, 3) images -> (all pixels concatenated (sum H*W*3,) uint8, [(H, W), ...]).

    The extraction workers pack a batch so that it crosses to the GPU as one pinned copy."""
    tensors = [_as_uint8_tensor(im, im.device if isinstance(im, torch.Tensor) else "cpu") for im in images]
    sizes = [(int(t.shape[0]), int(t.shape[1])) for t in tensors]
    return torch.cat([t.reshape(-1) for t in tensors]), sizes


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto ``device`` without waiting for the GPU: a copy from pageable memory would
    wait for the work already queued (the previous batch's forward pass)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


def vgg_preprocess_packed(flat: torch.Tensor, sizes: Sequence[tuple[int, int]], device=None,
                          plan: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``pack_images`` output -> float32 (B, 3, 224, 224) on ``device`` (default: ``flat``'s).

    ``plan``: ``batch_plan(sizes)`` if already computed (e.g. in a worker process)."""
    device = flat.device if device is None else torch.device(device)
    if len(sizes) == 0:
        return torch.empty((0, 3, CROP_SIZE, CROP_SIZE), dtype=torch.float32, device=device)
    if flat.numel() != sum(h * w * 3 for h, w in sizes):
        raise ImageError(f"packed images hold {flat.numel()} values, not the {sizes} images' pixels")
    flat = _to_device(flat, device)
    plan = {k: _to_device(v, device) for k, v in (plan or batch_plan(sizes)).items()}
    bases = np.cumsum([0] + [h * w * 3 for h, w in sizes[:-1]]).astype(np.int64)
    widths = np.array([w for _, w in sizes], dtype=np.int64)

    y_lo, y_hi, dy = plan["y_lo"], plan["y_hi"], plan["dy"]  # (B, 224) each
    x_lo, x_hi, dx = plan["x_lo"], plan["x_hi"], plan["dx"]
    base = _to_device(torch.from_numpy(bases), device)[:, None]
    w3 = _to_device(torch.from_numpy(widths * 3), device)[:, None]
    channel = torch.arange(3, device=device)

    def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:  # (B, 224, 224, 3) float32
        row_start = base + rows * w3  # (B, 224)
        index = row_start[:, :, None, None] + (cols * 3)[:, None, :, None] + channel
        return flat[index].to(torch.float32)

    dx4 = dx[:, None, :, None]
    dy4 = dy[:, :, None, None]
    top_left, top_right = corner(y_lo, x_lo), corner(y_lo, x_hi)
    top = top_left + (top_right - top_left) * dx4  # TF1: compute_lerp, float32
    del top_left, top_right
    bottom_left, bottom_right = corner(y_hi, x_lo), corner(y_hi, x_hi)
    bottom = bottom_left + (bottom_right - bottom_left) * dx4
    del bottom_left, bottom_right
    resized = top + (bottom - top) * dy4  # (B, 224, 224, 3)
    mean = _to_device(torch.tensor(RGB_MEAN, dtype=torch.float32), device)
    return (resized - mean).permute(0, 3, 1, 2).contiguous()  # (B, 3, 224, 224)


def vgg_preprocess(image, device=None) -> torch.Tensor:
    """One uint8 (H, W, 3) image -> float32 tensor (3, 224, 224), TF-slim VGG eval preprocessing."""
    return vgg_preprocess_batch([image], device=device)[0]
