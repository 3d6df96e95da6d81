"""Candidate GPU speed-ups that are not (yet) in the library, each timed side by side with the path
`lesa` takes today and with its numerical difference from it, so that one run on a card says which
to adopt.

    python benchmarks/gpu_experiments.py            # needs a CUDA GPU (--device cpu: a smoke run)

Candidates:
- inference (batch 4,096, float16 features resident on the GPU): the 2x2 conv's weight stored
  channels-last (the (B,14,14,512) regions are already channels-last, so cuDNN could skip the
  layout copies around the conv), and ``torch.compile`` of the forward pass (fuses the casts,
  batch-norm, ReLU, padding and tanh passes over the (B,196,512) activations);
- the training step: with and without deterministic algorithms (lesa train's default: does it
  explain why its eager loop ran 13.5 ms/it against a 7.4 ms eager step?), the conv weight
  channels-last, and cuDNN's benchmark mode (times the algorithms once per shape);
- the 2x2 conv alone (the step's largest kernels in float32): cuDNN's convolution as today vs the
  same conv as one matrix product over the four shifted copies of the regions (cuBLAS);
- the attention MLP's first product: the model's inner dimension 512 with the last row of W1 as a
  bias (aligned for tensor-core kernels) vs the original's 513 (the appended constant 1, what the
  model did before; same numbers to rounding);
- the VGG-19 forward of feature extraction per precision: NCHW vs channels-last, cuDNN's
  benchmark mode, and ``torch.compile`` (channels-last).
"""
from __future__ import annotations

import argparse
import copy
import os

import torch


def timed(fn, n: int, device: str) -> float:
    """Seconds per call: median of 3 blocks of ``n`` back-to-back calls (after one warm-up call),
    timed as ``lesa bench`` times the GPU step."""
    from lesa.bench import cuda_block_seconds, median_seconds

    fn()
    if device == "cuda":
        return cuda_block_seconds(fn, n)
    return median_seconds(lambda: [fn() for _ in range(n)], repeat=3, warmup=0) / n


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def inference(device: str, batch: int, quick: bool) -> None:
    from lesa.bench import nus_model
    from lesa.fast_step import predict

    model, _ = nus_model(device=device)
    model.eval()
    g = torch.Generator(device=device).manual_seed(0)
    feats = torch.relu(torch.randn(batch, 196, 512, device=device, generator=g)).half()
    reference = predict(model, feats, batch_size=batch)["gzs_logits"]
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    compiled = None
    try:
        compiled = torch.compile(copy.deepcopy(model), dynamic=False)
    except Exception as exc:  # no triton / compiler
        print(f"  torch.compile unavailable: {type(exc).__name__}: {exc}")
    print(f"inference, batch {batch}, float16 features on the {device}: images/s (scores vs fp32 today)")
    base = None
    for precision in ("fp32", "tf32", "bf16"):
        if precision == "tf32" and device != "cuda":
            continue
        for name, m in (("today", model), ("conv weight channels-last", last), ("torch.compile", compiled)):
            if m is None:
                continue
            try:
                run = lambda: predict(m, feats, batch_size=batch, precision=precision)  # noqa: E731
                seconds = timed(run, 1 if quick else 5, device)
                err = rel(run()["gzs_logits"], reference)
            except Exception as exc:
                print(f"  {precision:5} {name:28} failed: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            base = base or seconds
            print(f"  {precision:5} {name:28} {batch / seconds:10,.0f}  ({base / seconds:4.2f}x fp32 today; "
                  f"{err:.1e} rel)")


def training_step(device: str, quick: bool) -> None:
    from lesa import TFRMSprop
    from lesa.bench import BATCH, nus_model, resident_nus_data
    from lesa.fast_step import make_train_step, max_positives_of
    from lesa.train import set_tf32

    if device == "cuda":
        features, labels = resident_nus_data(4096)
    else:  # smoke run: the GPU modes fall back to the eager step, compiled rows are left out
        features = torch.relu(torch.randn(64, 196, 512)).half()
        labels = torch.where(torch.rand(64, 925) < 0.01, 1, -1).to(torch.int8)
    most = max_positives_of(labels)
    rows = torch.arange(BATCH, device=device)
    print("training step incl. data step: ms per step")
    # (name, train.step mode, TF32, conv weight channels-last, cudnn.benchmark, deterministic algorithms)
    candidates = [
        ("eager, fp32", "eager", False, False, False, False),
        ("eager, fp32, deterministic (lesa train's default)", "eager", False, False, False, True),
        ("cuda_graph, fp32", "cuda_graph", False, False, False, False),
        ("cuda_graph, fp32, deterministic (lesa train's default)", "cuda_graph", False, False, False, True),
        ("cuda_graph, fp32, conv weight channels-last", "cuda_graph", False, True, False, False),
        ("compile+cuda_graph, tf32", "compile+cuda_graph", True, False, False, False),
        ("compile+cuda_graph, tf32, conv weight channels-last", "compile+cuda_graph", True, True, False, False),
        ("cuda_graph, tf32", "cuda_graph", True, False, False, False),
        ("cuda_graph, tf32, cudnn.benchmark", "cuda_graph", True, False, True, False),
        ("cuda_graph, tf32, conv weight channels-last", "cuda_graph", True, True, False, False),
    ]
    base = None
    for name, mode, tf32, channels_last, benchmark, deterministic in candidates:
        if device != "cuda" and (tf32 or "compile" in mode):
            continue
        set_tf32(tf32)
        torch.backends.cudnn.benchmark = benchmark
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        model, opt = nus_model(device=device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            opt = TFRMSprop(model.parameters(), lr=1e-3)
        try:
            step = make_train_step(model, opt, max_positives=most, mode=mode)
            batch = lambda: step(features[rows].float(), labels[rows].float())  # noqa: E731
            for _ in range(5):
                batch()
            seconds = timed(batch, (20 if quick else 200) if mode == "eager" else (100 if quick else 1000), device)
        except Exception as exc:
            print(f"  {name:56} failed: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        finally:
            torch.backends.cudnn.benchmark = False
            torch.use_deterministic_algorithms(False)
        base = base or seconds
        print(f"  {name:56} {seconds * 1e3:7.3f} ms  ({base / seconds:5.2f}x the first row)")
    set_tf32(False)


def conv_as_gemm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The model's 2x2 conv (TF SAME padding: one zero row/column at the end) as one matrix
    product: the four shifted copies of the (B,14,14,512) regions side by side (B*196, 2048)
    times the weight as (2048, 512). Returns (B,196,512)."""
    B = x.shape[0]
    padded = torch.nn.functional.pad(x.reshape(B, 14, 14, 512), (0, 0, 0, 1, 0, 1))  # (B,15,15,512)
    taps = torch.cat([padded[:, :14, :14], padded[:, :14, 1:], padded[:, 1:, :14], padded[:, 1:, 1:]], dim=3)
    w = weight.permute(2, 3, 1, 0).reshape(4 * 512, 512)  # (dy, dx, in) x out
    return (taps.reshape(B * 196, 4 * 512) @ w).reshape(B, 196, 512)


def conv_alone(device: str, quick: bool) -> None:
    """The 2x2 conv's forward (+ weight gradient for the training batch) as cuDNN runs it today
    (NCHW view of the channels-last regions), as one GEMM (``conv_as_gemm``) and as three TF32
    convolutions of split operands (``lesa.split_tf32``, train.precision = "tf32x3")."""
    from lesa.split_tf32 import conv2d_3xtf32

    g = torch.Generator(device=device).manual_seed(0)
    weight = (torch.randn(512, 512, 2, 2, device=device, generator=g) * 0.03).requires_grad_()

    def today(x, conv=torch.nn.functional.conv2d):
        B = x.shape[0]
        nchw = x.reshape(B, 14, 14, 512).permute(0, 3, 1, 2)
        y = conv(torch.nn.functional.pad(nchw, (0, 1, 0, 1)), weight)
        return y.permute(0, 2, 3, 1).reshape(B, 196, 512)

    candidates = {"cuDNN conv (today)": today, "one GEMM": lambda x: conv_as_gemm(x, weight),
                  "3xTF32 split": lambda x: today(x, conv2d_3xtf32)}

    print("the 2x2 conv alone: ms per call (output vs fp32 today)")
    for batch, train, precisions in ((32, True, ("fp32", "tf32")), (4096, False, ("fp32", "tf32", "bf16"))):
        x = torch.relu(torch.randn(batch if device == "cuda" else min(batch, 64), 196, 512, device=device,
                                   generator=g))
        for precision in precisions:
            # 3xTF32 is meant for TF32 units (the CPU smoke run checks its arithmetic in fp32)
            split_here = precision == ("tf32" if device == "cuda" else "fp32")
            side_by_side({k: f for k, f in candidates.items() if k != "3xTF32 split" or split_here}, x,
                         (weight,) if train else None, precision, device, quick,
                         "forward + weight gradient" if train else "forward")


def side_by_side(candidates: dict, x: torch.Tensor, grads_of, precision: str, device: str, quick: bool,
                 what: str) -> None:
    """Time each candidate ``fn(x)`` (with the gradients of ``grads_of`` when given) at one
    precision and print ms per call and the output's difference from the first candidate in fp32."""
    from lesa.features.vgg import precision_context

    if precision == "tf32" and device != "cuda":
        return
    first = next(iter(candidates.values()))
    with torch.no_grad():
        reference = first(x)
    for name, fn in candidates.items():
        def call():
            if grads_of is None:
                with torch.no_grad():
                    return fn(x)
            y = fn(x)
            torch.autograd.grad(y, grads_of, torch.ones_like(y))
            return y.detach()
        try:
            with precision_context(precision, device):
                seconds = timed(call, 2 if quick or device != "cuda" else 50, device)
                err = rel(call(), reference)
        except Exception as exc:  # one failing candidate must not lose the others' rows
            print(f"  batch {x.shape[0]:5} {what:26} {precision:5} {name:30} failed: {type(exc).__name__}: "
                  f"{str(exc)[:100]}")
            continue
        print(f"  batch {x.shape[0]:5} {what:26} {precision:5} {name:30} {seconds * 1e3:8.3f} ms  ({err:.1e} rel)")


def attention_product(device: str, quick: bool) -> None:
    """The attention MLP's first product ``tanh([regions, 1] @ W1)`` as the original computed it
    (inner dimension 513: the appended constant 1 is the bias trick, and 513 is not a multiple of
    8, which tensor-core kernels prefer) vs as the model computes it now, ``addmm(W1[512],
    regions, W1[:512])`` (inner dimension 512, the last row as a bias)."""
    from lesa.model import append_one

    g = torch.Generator(device=device).manual_seed(0)
    w1 = (torch.randn(513, 512, device=device, generator=g) * 0.06).requires_grad_()
    candidates = {"addmm, last row as bias (now)": lambda x: torch.tanh(torch.addmm(w1[512], x.reshape(-1, 512),
                                                                                   w1[:512]).reshape(x.shape)),
                  "append_one @ W1 (before)": lambda x: torch.tanh(append_one(x) @ w1)}
    print("the attention's first product (+ tanh): ms per call (output vs the first row in fp32)")
    for batch, train, precisions in ((32, True, ("fp32", "tf32")), (4096, False, ("fp32", "tf32", "bf16"))):
        x = torch.relu(torch.randn(batch if device == "cuda" else min(batch, 64), 196, 512, device=device,
                                   generator=g)).requires_grad_(train)
        for precision in precisions:  # in training the regions depend on the conv: both gradients
            side_by_side(candidates, x, (x, w1) if train else None, precision, device, quick,
                         "forward + both gradients" if train else "forward")


def vgg_forward(device: str, batch: int, quick: bool) -> None:
    """VGG-19 conv5_4 per precision, NCHW vs channels-last (``lesa extract``'s default layout is
    channels-last except for fp32 on a GPU, which this settles), cuDNN's benchmark mode and
    ``torch.compile``."""
    from lesa.features.vgg import VGG19Conv54, precision_context

    nchw = VGG19Conv54().eval().to(device)
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    # torch.compile may fuse each ReLU into its conv (one pass less over every activation); on the
    # 2-core CPU it gave 1.03x, with fp32 features bit-identical
    compiled = torch.compile(copy.deepcopy(nhwc), dynamic=False)
    x = torch.randn(batch, 3, 224, 224, device=device)
    with torch.no_grad():
        reference = nchw(x)
    print(f"VGG-19 conv5_4 forward, batch {batch}: images/s (features vs fp32 NCHW)")
    for precision in ("fp32", "tf32", "bf16"):
        if precision == "tf32" and device != "cuda":
            continue
        for layout, model, benchmark in (("NCHW", nchw, False), ("channels-last", nhwc, False),
                                         ("channels-last", nhwc, True), ("compiled, CL", compiled, False)):
            torch.backends.cudnn.benchmark = benchmark
            try:
                with torch.no_grad(), precision_context(precision, device):
                    seconds = timed(lambda: model(x), 2 if quick else 10, device)
                    err = rel(model(x), reference)
            except Exception as exc:  # no triton / compiler: the other rows stand
                print(f"  {precision:5} {layout:13} failed: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            finally:
                torch.backends.cudnn.benchmark = False
            print(f"  {precision:5} {layout:13} cudnn.benchmark={benchmark!s:5} {batch / seconds:9,.1f}  ({err:.1e} rel)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", nargs="+", choices=["inference", "step", "conv", "attention", "vgg"],
                        default=["inference", "step", "conv", "attention", "vgg"])
    args = parser.parse_args()
    gpu = args.device == "cuda"
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as lesa train's deterministic runs
    print(torch.cuda.get_device_name(0) if gpu else "CPU (smoke run: GPU figures need a GPU)", torch.__version__)
    # cheapest first (the compiled rows take a minute or more each to compile): a run cut short by
    # a time limit still has the step and conv figures
    if "step" in args.only:
        training_step(args.device, args.quick)
    if "conv" in args.only:
        conv_alone(args.device, args.quick)
    if "attention" in args.only:
        attention_product(args.device, args.quick)
    if "inference" in args.only:
        inference(args.device, 4096 if gpu else 64, args.quick or not gpu)
    if "vgg" in args.only:
        vgg_forward(args.device, 256 if gpu else 4, args.quick or not gpu)


if __name__ == "__main__":
    main()
