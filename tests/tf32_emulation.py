"""Emulate a GPU's TF32 tensor cores on the CPU (a test helper, not a test file).

Why this exists: ``train.precision = "tf32"`` / ``"tf32x3"`` only change anything on a GPU, where
cuDNN (convolutions) and cuBLAS (matrix products) may feed float32 operands to TF32 tensor cores.
TF32 keeps float32's 8 exponent bits but only 10 of its 23 mantissa bits, so the *inputs* of each
product lose their low 13 mantissa bits; the products of two TF32 numbers are exact in float32 and
the sums are done in float32. On the CPU there is no TF32, so without help a CPU test cannot tell
whether tf32x3 (``lesa.split_tf32``) really keeps LESA within the golden tolerances on a TF32 unit.

``EmulatedTF32`` predicts that on the CPU: a ``TorchDispatchMode`` that, for each aten op a GPU
would run on tensor cores, rounds the float32 matrix operands to TF32 and then runs the op in
float32. A dispatch mode sits below autograd, so it sees the backward pass's ops as well (the
convolution's ``convolution_backward``, the ``mm``/``bmm`` of every matmul's gradient).

Ops intercepted (found by logging one LESA training step, forward + ``model.loss`` + backward, with
and without ``model.tf32x3``, for the paper's setting and the every-switch variant; see
``OpLog`` and tests/test_tf32_emulation.py):

- ``convolutions``: ``aten.convolution`` (what ``F.conv2d``/``nn.Conv2d`` lower to) and
  ``aten.convolution_backward`` (the conv's autograd gradient, and what
  ``torch.nn.grad.conv2d_input`` / ``conv2d_weight`` call directly, as the split conv does).
  Operands rounded: input, weight, grad_output. Not rounded: the bias (PyTorch adds it after the
  cuDNN call, in float32), and the bias gradient, which is a float32 sum of the unrounded
  grad_output (a reduction kernel, not a tensor-core product).
- ``matmuls``: ``aten.mm``, ``bmm``, ``addmm``, ``baddbmm``, ``addbmm`` (``@``, ``matmul``,
  ``einsum``, ``linear`` all lower to these below autograd). The two matrix operands are rounded;
  the added term (``self`` of addmm etc., scaled by ``beta``) is not: cuBLAS adds C in its float32
  epilogue. Matrix-vector and dot products (``mv``, ``addmv``, ``dot``) are left alone: none
  occurs in LESA's step (the op-log test fails if one appears), and whether cuBLAS would run its
  gemv/dot on TF32 units is not established here.

Not emulated: the accumulation order and rounding inside the tensor cores (taken as float32, as
NVIDIA documents), so a TF32 product is modelled as "round the inputs, then compute in float32".
How float32 inputs become TF32 is a property of the kernels, so both conversions are offered:
``rounding="nearest"`` (to nearest, ties to even; the default) and ``"truncate"`` (clear the low 13
bits, i.e. feed the raw float32 bits to the unit). Cross-check against hardware: on
``lesa.bench.bench_inference``'s NUS-shaped random model (925 seen / 81 unseen labels, T=10,
float16-valued relu(randn) features), plain TF32 moved the gzs scores by 4.3e-4 (relative norm) on
an H100; this emulator gives 4.3e-4 / 4.5e-4 (two seeds, 256 images) with "nearest" and 2.5e-3
with "truncate" (a biased rounding: its errors add up coherently along the 2048-long sums), so
the H100's figure is consistent with "nearest" and not with "truncate".
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lesa.split_tf32 import TF32_HIGH_BITS  # sign, exponent and the top 10 mantissa bits

aten = torch.ops.aten

CONV_OPS = (aten.convolution.default, aten.convolution_backward.default)
# op -> positions of the matrix operands to round (the others, e.g. addmm's C, stay float32)
MATMUL_OPS = {
    aten.mm.default: (0, 1),
    aten.bmm.default: (0, 1),
    aten.addmm.default: (1, 2),
    aten.baddbmm.default: (1, 2),
    aten.addbmm.default: (1, 2),
}


def round_tf32(t: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
    """``t`` (float32) rounded to the nearest TF32 value, stored as float32.

    ``"truncate"``: towards zero (clear the low 13 mantissa bits). ``"nearest"``: to nearest,
    ties to even; a value within half a TF32 step of the largest float overflows to +-inf, as
    a correctly rounded conversion must. inf stays inf, NaN stays NaN (truncating a NaN whose
    payload sits only in the low bits would otherwise turn it into inf), zeros and subnormals
    follow the same bit rule (TF32 shares float32's exponent range).
    """
    if t.dtype != torch.float32:
        return t  # only float32 operands go through the TF32 conversion
    bits = t.contiguous().view(torch.int32)
    nan = torch.isnan(t)
    if rounding == "truncate":
        rounded = bits & TF32_HIGH_BITS
    elif rounding == "nearest":
        # add half a TF32 step minus one ulp, plus the kept lowest bit (ties go to even), then
        # truncate; a carry runs into the exponent exactly as rounding up should. Adding to
        # the int32 bit pattern is magnitude arithmetic for either sign (sign-magnitude floats).
        bias = 0x0FFF + ((bits >> 13) & 1)
        rounded = (torch.where(nan, 0, bits) + bias) & TF32_HIGH_BITS  # (NaN patterns could wrap)
    else:
        raise ValueError(f"rounding must be 'truncate' or 'nearest', got {rounding!r}")
    return torch.where(nan, t, rounded.view(torch.float32)).view(t.shape)


class EmulatedTF32(TorchDispatchMode):
    """``with EmulatedTF32(convolutions=True, matmuls=True):`` runs the enclosed float32 convs
    and/or matrix products (forward and backward) on TF32-rounded operands, as a GPU with
    ``torch.backends.cudnn.allow_tf32`` / ``torch.backends.cuda.matmul.allow_tf32`` would.

    ``set_precision("tf32")`` on a GPU = ``EmulatedTF32(True, True)`` with the plain conv;
    ``set_precision("tf32x3")`` = ``EmulatedTF32(True, False)`` with ``model.tf32x3``.
    ``seen`` counts the ops whose operands were rounded (to check the mode actually bit).
    """

    def __init__(self, convolutions: bool = True, matmuls: bool = True, rounding: str = "nearest"):
        super().__init__()
        if rounding not in ("truncate", "nearest"):
            raise ValueError(f"rounding must be 'truncate' or 'nearest', got {rounding!r}")
        self.convolutions, self.matmuls, self.rounding = convolutions, matmuls, rounding
        self.seen: dict[str, int] = {}

    def _round(self, t):
        return round_tf32(t, self.rounding) if isinstance(t, torch.Tensor) else t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # (inside this handler the mode is off: the calls below run as plain CPU float32 ops)
        if self.convolutions and func is aten.convolution.default:
            # convolution(input, weight, bias, stride, padding, dilation, transposed, ...)
            args = (self._round(args[0]), self._round(args[1])) + tuple(args[2:])
        elif self.convolutions and func is aten.convolution_backward.default:
            # convolution_backward(grad_output, input, weight, bias_sizes, ..., output_mask)
            grad_output, inp, weight, bias_sizes, *rest = args
            mask = list(rest[-1])
            # grad_input = conv_transpose(grad_output, weight), grad_weight = conv(input, grad_output):
            # round only what the requested gradients read (torch.nn.grad.conv2d_input/_weight
            # pass an uninitialised expanded stand-in for the operand they do not need)
            if mask[0]:
                weight = self._round(weight)
            if mask[1]:
                inp = self._round(inp)
            grad_in, grad_w, _ = func(self._round(grad_output), inp, weight, bias_sizes, *rest[:-1],
                                      [mask[0], mask[1], False])
            # the bias gradient: a float32 sum of the unrounded incoming gradient
            grad_b = grad_output.sum(dim=[d for d in range(grad_output.ndim) if d != 1]) if mask[2] else None
            self.seen[str(func)] = self.seen.get(str(func), 0) + 1
            return grad_in, grad_w, grad_b
        elif self.matmuls and func in MATMUL_OPS:
            args = list(args)
            for i in MATMUL_OPS[func]:
                args[i] = self._round(args[i])
        else:
            return func(*args, **kwargs)
        self.seen[str(func)] = self.seen.get(str(func), 0) + 1
        return func(*args, **kwargs)


class OpLog(TorchDispatchMode):
    """Records every aten op dispatched (with the dtypes of its tensor arguments): the empirical
    check that ``EmulatedTF32`` intercepts every product a TF32 unit would run."""

    def __init__(self):
        super().__init__()
        self.ops: dict[str, set] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtypes = tuple(a.dtype for a in args if isinstance(a, torch.Tensor))
        self.ops.setdefault(str(func), set()).add(dtypes)
        return func(*args, **kwargs)
