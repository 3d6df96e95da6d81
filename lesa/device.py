"""Where and in which arithmetic LESA and VGG-19 run: the device and the precision choices.

- ``pick_device("auto" | "cpu" | "cuda" | "cuda:N")``; on a GPU it switches TF32 off, so training
  and scoring are full float32 as in the original (TF 1.8 had no TF32).
- ``precision_context(name, device)``: a context for forward passes. ``fp32`` is exact; ``tf32`` lets a
  GPU's matrix units round the operands of products and convolutions to TF32 (scores move by
  ~4e-4 relative, outside the goldens' 1e-5); ``bf16`` runs under bfloat16 autocast (scores
  ~4e-3 off; about 2x faster on a GPU or on a CPU with bfloat16 units, much slower on a CPU
  without them).
- ``channels_last_by_default``: the layout VGG-19 runs in unless told otherwise.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from lesa.errors import ConfigError

DEVICES_HELP = "auto (a GPU when one is visible), cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "tf32", "bf16")  # forward passes: evaluation, extraction, tagging
TRAIN_PRECISIONS = ("fp32", "tf32")  # the training step (bf16 training was never a goal)


def set_tf32(enabled: bool) -> None:
    """TF32 matrix units for float32 convolutions and matrix products (GPUs from Ampere on)."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(enabled)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU. TF32 is switched off on a GPU."""
    name = str(name or "auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not one of: {DEVICES_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not one of: {DEVICES_HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but no CUDA GPU is visible to torch; "
                              "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) are visible")
        set_tf32(False)
    return device


def check_precision(name: str, choices=PRECISIONS, what: str = "precision") -> str:
    if name not in choices:
        raise ConfigError(f"{what} {name!r} is not one of {', '.join(choices)}")
    return name


@contextmanager
def precision_context(name: str, device: torch.device | str):
    """Forward passes inside run at ``name`` (``PRECISIONS``); the TF32 switches are restored after."""
    check_precision(name)
    device = torch.device(device)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    set_tf32(name == "tf32")
    try:
        if name == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def channels_last_by_default(device: torch.device | str, precision_name: str) -> bool:
    """VGG-19 in NHWC ("channels-last") layout: on the CPU (oneDNN: 1.2x the images/s of NCHW on a
    2-core EPYC) and for tf32/bf16 on a GPU (cuDNN's tensor-core kernels work in NHWC); fp32 on a
    GPU stays NCHW (the two layouts have not been compared there)."""
    return torch.device(device).type != "cuda" or precision_name != "fp32"
