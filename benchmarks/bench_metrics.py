"""The evaluation protocol at NUS-WIDE size, next to ``np.sort`` of the same matrix, on the CPU.

    python benchmarks/bench_metrics.py                     # 107,859 x 1,006, the whole test split
    python benchmarks/bench_metrics.py --old /work/old     # also the implementation before the redesign
    python benchmarks/bench_metrics.py --images 20000 --repeat 1

Scores are float32 (N, C), labels in {-1, 0, 1} with a few positives per image (uneven label
frequencies, 5% unannotated, positives scoring a little higher: a trained model's look;
``benchmarks/run.py``'s ``synthetic_scores``). In the same run it times
- ``lesa.metrics.average_precision`` (every class's AP) against ``np.sort`` of the same matrix
  (goal: within 6x), with torch's threads and with one thread (``np.sort`` uses one), and, for
  scale, ``torch.sort`` of every class's scores (why ``lesa.metrics`` sorts with numpy on a CPU);
- the implementation of another checkout (``--old``, e.g. the code before the redesign) on the
  same data, with the largest AP difference;
- top-K F1@3 and F1@5 (``topk_f1_many``, one top-k pass), and the same in the ``--old`` checkout.
Each figure is the median of ``--repeat`` runs after a warm-up run. Prints the machine and its
load average (on a shared machine other work slows the threaded figures most).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lesa import metrics
from run import machine_line, synthetic_scores  # (benchmarks/run.py)

NUS_TEST_IMAGES, NUS_LABELS = 107_859, 1_006


def median_seconds(fn, repeat: int, clock=time.perf_counter) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def one_thread(fn):
    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)
    return run


def torch_sort_columns(scores: np.ndarray, width: int = 38) -> None:
    """Each column sorted by ``torch.sort``, as an AP that sorts every class's scores would."""
    s = torch.from_numpy(scores)
    for c0 in range(0, s.shape[1], width):
        torch.sort(s[:, c0:c0 + width].contiguous().T.contiguous(), dim=1)


def load_old(checkout: Path):
    """``lesa/metrics.py`` of another checkout as a module of its own (its imports of the rest of
    ``lesa`` resolve to this one)."""
    spec = importlib.util.spec_from_file_location("old_metrics", Path(checkout) / "lesa" / "metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(what: str, seconds: float, baseline: str, base_seconds: float | None, note: str = "") -> None:
    measured = f"{base_seconds:.2f} s" if base_seconds else "not measured"
    ratio = f"{seconds / base_seconds:.2f}x the baseline" if base_seconds else "-"
    note = f" | {note}" if note else ""
    print(f"{what}: {seconds:.2f} s | baseline, {baseline}: {measured} | {ratio}{note}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=NUS_TEST_IMAGES)
    ap.add_argument("--labels", type=int, default=NUS_LABELS)
    ap.add_argument("--positives-per-image", type=float, default=7.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--old", type=Path, default=None,
                    help="another checkout (e.g. /work/old) timed on the same data")
    args = ap.parse_args(argv)

    scores, labels = synthetic_scores(args.images, args.labels, args.positives_per_image, seed=2)
    print(f"machine: {machine_line()}; numpy {np.__version__}")
    print(f"data: {args.images:,} x {args.labels:,} float32 scores, "
          f"{np.count_nonzero(labels > 0) / args.images:.1f} positives per image, "
          f"{np.count_nonzero(labels == 0) / labels.size:.1%} unannotated; median of {args.repeat}")
    ks = (3, 5)

    def ours_ap():
        return metrics.average_precision(scores, labels)

    def ours_f1():
        return metrics.topk_f1_many(scores, labels, ks)

    def np_sort():
        return np.sort(scores)

    t_sort = median_seconds(np_sort, args.repeat)
    t_ap = median_seconds(ours_ap, args.repeat)
    t_ap1 = median_seconds(one_thread(ours_ap), args.repeat)
    for what, t in (("", t_ap), (", 1 thread", t_ap1)):
        row(f"AP of every class (average_precision{what})", t, "np.sort of the same matrix", t_sort,
            f"goal within 6x: {'met' if t <= 6 * t_sort else 'NOT met'}")
    # the processor time of one thread: what other work on a shared machine changes least
    cpu_sort = median_seconds(np_sort, args.repeat, time.process_time)
    cpu_ap1 = median_seconds(one_thread(ours_ap), args.repeat, time.process_time)
    row("AP of every class, 1 thread, processor time", cpu_ap1, "np.sort, processor time", cpu_sort)
    t_torch_sort = median_seconds(lambda: torch_sort_columns(scores), args.repeat)
    row("for scale: torch.sort of every class's scores, in chunks of 38 classes (no AP)", t_torch_sort,
        "np.sort of the same matrix", t_sort)
    t_f1 = median_seconds(ours_f1, args.repeat)
    row("top-K F1@3 and F1@5 (topk_f1_many, overall)", t_f1, "np.sort of the same matrix", t_sort)

    if args.old:
        old = load_old(args.old)
        theirs = old.average_precision(scores, labels)
        t_old_ap = median_seconds(lambda: old.average_precision(scores, labels), args.repeat)
        t_old_f1 = median_seconds(lambda: old.topk_f1_many(scores, labels, ks), args.repeat)
        same_f1 = ours_f1() == old.topk_f1_many(scores, labels, ks)
        row("AP of every class", t_ap, f"the implementation in {args.old}", t_old_ap,
            f"max |AP - old AP| = {np.abs(ours_ap() - theirs).max():.1e}")
        row("top-K F1@3 and F1@5", t_f1, f"the implementation in {args.old}", t_old_f1,
            f"F1, P, R {'equal' if same_f1 else 'DIFFER'}")

    if torch.cuda.is_available():
        s, y = torch.from_numpy(scores).cuda(), torch.from_numpy(labels).cuda()

        def on_gpu():
            metrics.average_precision(s, y)
            torch.cuda.synchronize()

        diff = np.abs(metrics.average_precision(s, y) - ours_ap()).max()
        row(f"AP of every class on {torch.cuda.get_device_name()}", median_seconds(on_gpu, args.repeat),
            "the CPU run above", t_ap, f"max |GPU AP - CPU AP| = {diff:.1e}")
    print("load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
