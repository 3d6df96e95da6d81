"""LESA's two large products on TF32 tensor cores with float32's accuracy ("3xTF32"): the 2x2
convolution and the attention MLP's first layer.

TF32 keeps 10 of float32's 23 mantissa bits, so a plain TF32 convolution moves LESA's scores by
~4e-4 (outside the goldens' 1e-5). Splitting each operand into a TF32-exact high part and the
remainder, ``x = x_hi + x_lo``, and summing the three significant products

    conv(x, w) ~= conv(x_hi, w_hi) + conv(x_hi, w_lo) + conv(x_lo, w_hi)

recovers float32's accuracy (the dropped ``x_lo * w_lo`` is ~2^-22 of the result) at three TF32
convolutions' cost, which on a GPU is far below one float32 convolution on the SIMT units.
``train.precision = "tf32x3"`` uses it for the conv and for the attention's ``regions @ W1``
(forward pass and gradients: together ~99% of the step's multiply-adds); every other product
stays in full float32. The attention product runs as a 1x1 convolution (``linear_3xtf32``), so
that cuDNN's TF32 switch, which tf32x3 turns on, applies to it while cuBLAS's matrix products stay
float32. On the CPU (no TF32) the three products are plain float32: slower, and equal to the
plain products within float32 rounding. tests/tf32_emulation.py emulates TF32 on the CPU to
check that the goldens hold through it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TF32_HIGH_BITS = -8192  # 0xFFFFE000 as int32: sign, exponent and the top 10 mantissa bits


def split_tf32(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t = hi + lo`` exactly, with ``hi`` exactly representable in TF32 (low 13 mantissa bits
    cleared) and ``lo`` the remainder (float32)."""
    hi = (t.contiguous().view(torch.int32) & TF32_HIGH_BITS).view(torch.float32)
    return hi, t - hi


class _Conv2d3xTF32(torch.autograd.Function):
    """conv2d(x, w) (no padding, stride 1) and its gradients as three split products each."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x_hi, x_lo = split_tf32(x)
        w_hi, w_lo = split_tf32(weight)
        ctx.save_for_backward(x_hi, x_lo, w_hi, w_lo)
        return F.conv2d(x_hi, w_hi) + F.conv2d(x_hi, w_lo) + F.conv2d(x_lo, w_hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_hi, x_lo, w_hi, w_lo = ctx.saved_tensors
        g_hi, g_lo = split_tf32(grad)
        dx = dw = None
        if ctx.needs_input_grad[0]:  # (LESA's conv reads fixed VGG features: not needed there)
            di = torch.nn.grad.conv2d_input
            shape = x_hi.shape
            dx = di(shape, w_hi, g_hi) + di(shape, w_lo, g_hi) + di(shape, w_hi, g_lo)
        if ctx.needs_input_grad[1]:
            dwt = torch.nn.grad.conv2d_weight
            shape = w_hi.shape
            dw = dwt(x_hi, shape, g_hi) + dwt(x_hi, shape, g_lo) + dwt(x_lo, shape, g_hi)
        return dx, dw


def conv2d_3xtf32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` (stride 1, no padding) as three TF32-friendly products."""
    out = _Conv2d3xTF32.apply(x, weight)
    return out if bias is None else out + bias[:, None, None]


def linear_3xtf32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight + bias`` for ``x (B, N, K)``, ``weight (K, M)``, ``bias (M,)`` as a split 1x1
    convolution (cuDNN: TF32 under tf32x3, while cuBLAS matrix products stay float32)."""
    columns = x.transpose(1, 2).unsqueeze(-1)  # (B, K, N, 1): N positions of K channels
    out = conv2d_3xtf32(columns, weight.t()[:, :, None, None], bias)  # (B, M, N, 1)
    return out.squeeze(-1).transpose(1, 2)  # (B, N, M)
