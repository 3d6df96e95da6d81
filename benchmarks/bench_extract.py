"""Images/s from JPEG files on disk to an HDF5 feature file, per decoder and precision.

    python benchmarks/bench_extract.py                     # short on a CPU (16 images, fp32 rows)
    python benchmarks/bench_extract.py --all               # every row the device can run
    python benchmarks/bench_extract.py --device cuda --images 16384 --batch-size 256 --workers 16

Writes --images synthetic photos (scikit-image samples resized to typical Flickr sizes, JPEG
quality 90) to a temporary folder, then runs the whole pipeline (``lesa.features.extract``: read +
decode in worker processes, preprocess, VGG-19 conv5_4, HDF5 write) with random VGG weights (the
real ones' cost). Also the parts alone: the decoder (one process), the HDF5 writer, the reading side
(the worker processes with no model: the most the pipeline reaches with them) and the VGG forward.
Each pipeline row prints its rate, the baseline of the same run (exact decoder, fp32, NCHW), the
ratio and how long the loop waited for decoded images, in the model and in the writer.

Two comparisons of a removed part with today's path, in the same run (median of --repeat runs,
alternated):
- the HDF5 writer in a background thread (removed) vs in the loop, with a stand-in for VGG-19 of
  negligible cost (a GPU's situation, where the writer's share is largest): a thread can save at
  most the loop's time in the writer;
- batches allocated in shared memory by the workers (torch's private ``UntypedStorage._new_shared``,
  removed) vs the DataLoader's standard hand-over (which copies each batch into shared memory).
"""
from __future__ import annotations

import argparse
import os
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def make_images(folder: Path, n: int) -> list[Path]:
    import simplejpeg
    import skimage.data as data
    from skimage.transform import resize

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    sizes = [(375, 500), (500, 375), (333, 500), (500, 500)]
    encoded = []
    for image, (h, w) in zip(sources, sizes):
        small = (resize(image, (h, w), anti_aliasing=True) * 255).astype(np.uint8)
        encoded.append(simplejpeg.encode_jpeg(small, quality=90))
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:06d}.jpg")
        paths[-1].write_bytes(encoded[i % len(encoded)])
    return paths


def bench_pipeline(paths, out, model=None, **settings):
    from lesa.features.extract import ExtractionSource, build_model, extract_features

    source = ExtractionSource("bench", "bench", [p.name for p in paths], list(paths), {}, lambda pos: {})
    return extract_features(source, out, model or build_model("random", None), overwrite=True, progress=False,
                            **settings)


class CheapModel(torch.nn.Module):
    """(B, 3, 224, 224) -> (B, 196, 512) at a negligible cost: what the loop sees of a fast GPU."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 512, kernel_size=1)
        self.source, self.weights_sha256 = "cheap-stand-in", "none"

    def forward(self, x):
        fmap = self.proj(torch.nn.functional.avg_pool2d(x, 16))  # (B, 512, 14, 14)
        return fmap.permute(0, 2, 3, 1).reshape(x.shape[0], 196, 512)


class ThreadedWriter:
    """The removed background writer, as a baseline: ``append`` hands the batch to a thread (at most
    two wait) while the loop computes the next one; ``finish`` waits for it."""

    def __init__(self, *args, **kwargs):
        from lesa.datasets.h5 import FeatureWriter

        self.writer = FeatureWriter(*args, **kwargs)
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for args in iter(self.queue.get, None):
            self.writer.append(*args)
            self.queue.task_done()

    def append(self, *args):
        self.queue.put(args)

    def _drain(self):
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    @property
    def n_written(self) -> int:
        self.queue.join()  # every queued batch written
        return self.writer.n_written

    done_ids = property(lambda self: self.writer.done_ids)
    partial = property(lambda self: self.writer.partial)

    def set_attrs(self, **attrs):
        self.queue.join()
        self.writer.set_attrs(**attrs)

    def finish(self):
        self._drain()
        return self.writer.finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._drain()
        self.writer.close()


def bench_writer_thread(paths, out, repeat: int, **settings) -> tuple[float, float, float]:
    """Median images/s with the writer in the loop and in a thread, and the median share of the
    loop's time spent in the writer (what a thread can save at most)."""
    import lesa.features.extract as extract

    in_loop, threaded, writer_seconds = [], [], []
    for _ in range(repeat):
        summary = bench_pipeline(paths, out, CheapModel(), **settings)
        in_loop.append(summary.images_per_second)
        writer_seconds.append(summary.waits.get("in the writer", 0.0) / summary.seconds)
        real, extract.FeatureWriter = extract.FeatureWriter, ThreadedWriter
        try:
            threaded.append(bench_pipeline(paths, out, CheapModel(), **settings).images_per_second)
        finally:
            extract.FeatureWriter = real
    return statistics.median(in_loop), statistics.median(threaded), statistics.median(writer_seconds)


def bench_decode(paths) -> float:
    from lesa.features.jpeg import decode_jpeg

    blobs = [p.read_bytes() for p in paths[:200]]
    t0 = time.perf_counter()
    for blob in blobs:
        decode_jpeg(blob)
    return len(blobs) / (time.perf_counter() - t0)


def _shared_memory_collate(items, max_pixels):
    """The removed hand-over: the batch's pixels allocated in shared memory by the worker."""
    from lesa.features.extract import _collate

    batch = _collate(items, max_pixels)
    if torch.utils.data.get_worker_info() is not None:
        shared = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(batch.pixels.numel()))
        batch.pixels = shared.copy_(batch.pixels)  # (the old path packed straight into it)
    return batch


def bench_loader(paths, device, decoder, batch_size, workers, removed_shared_memory=False) -> float:
    """Images/s of the reading side alone (read + decode + pack in the workers, handed to this
    process, page-locked for a GPU), no model."""
    from functools import partial

    import lesa.features.extract as extract

    loader = extract.image_loader(paths, range(len(paths)), decoder, batch_size, workers, torch.device(device))
    if removed_shared_memory:
        loader = torch.utils.data.DataLoader(loader.dataset, batch_size=batch_size, num_workers=workers,
                                             collate_fn=partial(_shared_memory_collate, max_pixels=extract.MAX_PIXELS),
                                             pin_memory=loader.pin_memory)
    t0 = time.perf_counter()
    n = sum(len(batch.positions) for batch in loader)
    return n / (time.perf_counter() - t0)


def bench_writer(folder: Path, dtype: str, batch: int = 256, batches: int = 8) -> float:
    """Images/s of the HDF5 writer alone (HDF5 computes each chunk's Fletcher-32)."""
    from lesa.datasets.h5 import FeatureWriter

    feats = torch.rand(batch, 196, 512).to(getattr(torch, dtype)).numpy()
    with FeatureWriter(folder / "writer.h5", "bench", "bench", {}, dtype=dtype, overwrite=True) as writer:
        t0 = time.perf_counter()
        for k in range(batches):
            writer.append([f"{k}_{i}" for i in range(batch)], feats, {})
        seconds = time.perf_counter() - t0
    for leftover in folder.glob("writer.h5*"):
        leftover.unlink()
    return batch * batches / seconds


def bench_forward(device, precision, batch_size, channels_last, iters) -> float:
    from lesa.device import precision_context
    from lesa.features.vgg import VGG19Conv54

    model = VGG19Conv54().eval().to(device)
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    with torch.no_grad(), precision_context(precision, device):
        model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()
    return batch_size * iters / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=None, help="default 16384 on a GPU, 16 on the CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on a GPU, 8 on the CPU")
    parser.add_argument("--workers", type=int, default=None, help="default: all CPU cores")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side of the two comparisons")
    parser.add_argument("--all", action="store_true", help="on a CPU also the bf16 rows (slow without "
                                                          "bfloat16 units)")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    n = args.images or (16384 if gpu else 16)
    batch = args.batch_size or (256 if gpu else 8)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    name = torch.cuda.get_device_name() if gpu else f"{os.cpu_count()}-core CPU, no GPU"
    print(f"device: {name}; {n} images, batch {batch}, {workers} workers, torch threads {torch.get_num_threads()}")
    common = dict(device=args.device, batch_size=batch, workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp, n)
        print(f"decoder alone (exact, 1 process): {bench_decode(paths):.0f} img/s")
        for dtype in ("float32", "float16"):
            print(f"writer alone, {dtype} file: {bench_writer(tmp, dtype):.0f} img/s")
        more = [paths[i % n] for i in range(max(n, 32 * batch))]  # the cheap rows: more than start-up
        for decoder in ("exact", "gpu") if gpu else ("exact",):
            rates = {False: [], True: []}
            for _ in range(args.repeat):
                for removed in (False, True):
                    rates[removed].append(bench_loader(more, args.device, decoder, batch, workers, removed))
            new, old = statistics.median(rates[False]), statistics.median(rates[True])
            print(f"reading side alone ({decoder} decoder, {workers} workers, {len(more)} images, no model, median "
                  f"of {args.repeat}): {new:.0f} img/s "
                  f"with the DataLoader's hand-over, {old:.0f} img/s with batches allocated in shared memory "
                  f"(removed): {new / old:.2f}x")

        rows = [("exact", "fp32", False, "float32"), ("exact", "fp32", True, "float32"),
                ("exact", "tf32", True, "float32"), ("exact", "bf16", True, "float32"),
                ("exact", "bf16", True, "float16"), ("gpu", "tf32", True, "float32"), ("gpu", "bf16", True, "float32")]
        print(f"{'pipeline (JPEG files -> HDF5)':<46} {'img/s':>9} {'baseline':>9} {'ratio':>6}  seconds of the loop")
        baseline, warmed = None, set()
        for decoder, precision, channels_last, dtype in rows:
            label = f"{decoder} decoder, {precision}{', channels-last' if channels_last else ''}, {dtype} file"
            if (decoder == "gpu" or precision == "tf32") and not gpu:
                print(f"{label:<46} {'not measured (needs a GPU)':>26}")
                continue
            if precision == "bf16" and not (gpu or args.all):
                print(f"{label:<46} {'not measured (--all)':>26}")
                continue
            settings = dict(decoder=decoder, precision=precision, channels_last=channels_last, dtype=dtype, **common)
            if gpu and decoder not in warmed:  # one-off set-up (nvjpeg's takes seconds) stays out of the figures
                bench_pipeline(paths[: 2 * batch], tmp / "warm.h5", **settings)
                warmed.add(decoder)
            summary = bench_pipeline(paths, tmp / "bench.h5", **settings)
            rate = summary.images_per_second
            baseline = baseline or rate
            waits = ", ".join(f"{v:.2f} s {k}" for k, v in summary.waits.items())
            print(f"{label:<46} {rate:9.1f} {baseline:9.1f} {rate / baseline:6.2f}  {waits} (of {summary.seconds:.1f} s)")

        in_loop, threaded, share = bench_writer_thread(more, tmp / "thread.h5", args.repeat, **common)
        print(f"writer in the loop vs in a background thread (removed), {len(more)} images, a model of negligible "
              f"cost, median of {args.repeat}: {in_loop:.1f} vs {threaded:.1f} img/s ({in_loop / threaded:.2f}x); "
              f"the loop spent {share:.1%} of its time in the writer, the most a thread can save")
        print("VGG forward alone")
        for precision, channels_last in (("fp32", False), ("fp32", True), ("tf32", True), ("bf16", True)):
            if not gpu and (precision == "tf32" or precision == "bf16" and not args.all):
                continue
            rate = bench_forward(args.device, precision, batch, channels_last, iters=20 if gpu else 2)
            print(f"  {precision}{', channels-last' if channels_last else '':<16} {rate:9.1f} img/s")


if __name__ == "__main__":
    main()
