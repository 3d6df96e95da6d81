"""Where the GPU time of one training step goes: the kernels of the NUS-WIDE-shaped step
(batch 32, 925 seen / 81 unseen, T=10), per precision, from torch.profiler.

    python benchmarks/profile_step.py [--precision fp32 tf32] [--mode compile+cuda_graph]

Prints, per precision, the number of kernels one step launches, their summed GPU time (what a
CUDA graph replay costs at best) and the kernels that take the most time. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse

import torch


def profile(precision: str, mode: str, steps: int = 10, top: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from lesa.bench import nus_model, resident_nus_data, BATCH
    from lesa.fast_step import make_train_step, max_positives_of
    from lesa.train import set_precision

    features, labels = resident_nus_data(1024)
    model, opt = nus_model(device="cuda")
    set_precision(precision, model)
    step = make_train_step(model, opt, max_positives=max_positives_of(labels), mode=mode)
    rows = torch.arange(BATCH, device="cuda")
    for _ in range(5):
        step(features[rows].float(), labels[rows].float())
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(features[rows].float(), labels[rows].float())
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    total_us = sum(e.device_time_total for e in kernels) / steps
    count = sum(e.count for e in kernels) / steps
    print(f"\n{precision}, mode {mode}: {count:.0f} kernels per step, {total_us / 1e3:.3f} ms of GPU time per step")
    for e in kernels[:top]:
        print(f"  {e.device_time_total / steps:8.1f} us  x{e.count / steps:4.0f}  {e.key[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", default=["fp32", "tf32", "tf32x3"], choices=["fp32", "tf32", "tf32x3"])
    parser.add_argument("--mode", default="eager", help="a lesa.fast_step mode (default eager)")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(0))
    for precision in args.precision:
        profile(precision, args.mode)


if __name__ == "__main__":
    main()
