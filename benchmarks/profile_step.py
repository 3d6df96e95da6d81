"""Where the GPU time of one training step goes: the kernels of the NUS-WIDE-shaped step
(batch 32, 925 seen / 81 unseen, T=10), per precision, from torch.profiler; and the same for
inference at batch 4,096 (``--inference``: the issue's 200,000 images/s goal).

    python benchmarks/profile_step.py [--precision fp32 tf32] [--mode compile+cuda_graph]
    python benchmarks/profile_step.py --inference [--precision fp32 tf32 bf16]

Prints, per precision, the number of kernels one step (or one inference batch) launches, their
summed GPU time (what a CUDA graph replay costs at best) and the kernels that take the most
time. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse

import torch


def profile(precision: str, mode: str, steps: int = 10, top: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from lesa.device import set_tf32
    from lesa.step import TrainStep
    from run import N_SEEN, nus_batch, nus_model

    features, labels = nus_batch("cuda")
    model, opt = nus_model(device="cuda")
    set_tf32(precision == "tf32")
    step = TrainStep(model, opt, mode=mode, max_positives=None if mode == "eager" else N_SEEN)
    for _ in range(5):
        step(features, labels)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(features, labels)
        torch.cuda.synchronize()
    _print_kernels(prof, steps, f"{precision}, mode {mode}", "step", top)


def profile_inference(precision: str, batch: int = 4096, repeats: int = 5, top: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from lesa.device import set_tf32
    from lesa.evaluate import predict
    from run import nus_model

    set_tf32(False)
    features = torch.relu(torch.randn(batch, 196, 512, device="cuda")).half()  # as a GPU preload holds them
    model, _ = nus_model(device="cuda")
    for _ in range(2):
        predict(model, features, batch_size=batch, precision=precision)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            predict(model, features, batch_size=batch, precision=precision)
        torch.cuda.synchronize()
    _print_kernels(prof, repeats, f"inference, batch {batch}, {precision}", "batch", top)
    total_us = sum(e.device_time_total for e in _kernels(prof)) / repeats
    if total_us > 0:
        print(f"  (GPU time alone allows {batch / total_us * 1e6:,.0f} images/s)")


def _kernels(prof):
    return [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]


def _print_kernels(prof, repeats: int, title: str, per: str, top: int) -> None:
    kernels = sorted(_kernels(prof), key=lambda e: e.device_time_total, reverse=True)
    total_us = sum(e.device_time_total for e in kernels) / repeats
    count = sum(e.count for e in kernels) / repeats
    print(f"\n{title}: {count:.0f} kernels per {per}, {total_us / 1e3:.3f} ms of GPU time per {per}")
    for e in kernels[:top]:
        print(f"  {e.device_time_total / repeats:8.1f} us  x{e.count / repeats:4.0f}  {e.key[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "tf32", "bf16"],
                        help="default: fp32 tf32 (step), fp32 tf32 bf16 (--inference)")
    parser.add_argument("--mode", default="eager", help="a train.step mode (default eager)")
    parser.add_argument("--inference", action="store_true", help="profile inference at batch 4,096 instead")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(0))
    if args.inference:
        for precision in args.precision or ["fp32", "tf32", "bf16"]:
            profile_inference(precision)
        return
    for precision in args.precision or ["fp32", "tf32"]:
        if precision == "bf16":
            parser.error("bf16 is an inference precision (--inference); training uses fp32 or tf32")
        profile(precision, args.mode)


if __name__ == "__main__":
    main()
