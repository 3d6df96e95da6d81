"""Images/s from JPEG files on disk to an HDF5 feature file, per decoder and precision.

    python benchmarks/bench_extract.py                     # CPU rows here; GPU rows when CUDA is visible
    python benchmarks/bench_extract.py --device cuda --images 16384 --batch-size 256 --workers 16

Writes --images synthetic photos (scikit-image samples resized to typical Flickr sizes, JPEG
quality 90) to a temporary folder, then runs the full pipeline (read + decode in worker processes,
preprocess, VGG-19 conv5_4, HDF5 write) with random VGG weights (same cost as the real ones).
Also reports the decoder alone (one process), the HDF5 writer alone, the reading side alone (the
worker processes with no model: the most the pipeline can reach with them) and the VGG forward
alone. Each row prints the figure
(images over the whole call), the baseline of the same run (exact decoder, fp32), the ratio, the
steady rate after the first batch was written (worker start-up excluded: what a long extraction
runs at) and how long the main loop waited for decoded images, the model and the writer (the
largest names the bottleneck). "not measured" rows need a GPU.
"""
from __future__ import annotations

import argparse
import tempfile
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
    for i, image in enumerate(sources):
        h, w = sizes[i]
        small = (resize(image, (h, w), anti_aliasing=True) * 255).astype(np.uint8)
        encoded.append(simplejpeg.encode_jpeg(small, quality=90))
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(encoded[i % len(encoded)])
        paths.append(path)
    return paths


def bench_pipeline(paths, device, decoder, precision, batch_size, workers, channels_last, out,
                   dtype="float32"):
    from lesa.features.extract import ExtractionSource, build_model, extract_features

    source = ExtractionSource("bench", "bench", [p.name for p in paths], list(paths), {},
                              lambda pos: {})
    model = build_model("random", None)
    summary = extract_features(source, out, model, device=device, batch_size=batch_size, workers=workers,
                               precision=precision, decoder=decoder, channels_last=channels_last,
                               dtype=dtype, overwrite=True, progress=False)
    return summary


def bench_decode(paths, repeat: int = 1) -> float:
    from lesa.features.jpeg import decode_jpeg

    blobs = [p.read_bytes() for p in paths[:200]]
    t0 = time.perf_counter()
    for _ in range(repeat):
        for blob in blobs:
            decode_jpeg(blob)
    return len(blobs) * repeat / (time.perf_counter() - t0)


def bench_loader(paths, device, decoder, batch_size, workers) -> tuple[float, float]:
    """Images/s of the reading side alone (read + decode + pack in the workers, handed to this
    process, page-locked for a GPU) with no model: the most the pipeline can reach with these
    workers. Returns (rate over the whole run, rate after the first batch)."""
    from lesa.features.extract import image_loader

    loader = image_loader(paths, range(len(paths)), decoder, batch_size, workers, torch.device(device))
    t0 = time.perf_counter()
    batches = iter(loader)
    first = next(batches)
    t1, n_first, n = time.perf_counter(), len(first["positions"]), 0
    for batch in batches:
        n += len(batch["positions"])
    end = time.perf_counter()
    return (n_first + n) / (end - t0), n / (end - t1) if n else 0.0


def bench_writer(folder: Path, dtype: str, chunks_ready: bool, batch: int = 256, batches: int = 8) -> float:
    """Images/s of the HDF5 writer alone into ``folder``: records handed over as the file's chunks
    (what the GPU pipeline builds on the card) or as features + checksums (one more host copy)."""
    from lesa.datasets.h5 import FeatureWriter, fletcher32_of_records, record_chunks

    feats = torch.rand(batch, 196, 512).to(getattr(torch, dtype))
    sums = fletcher32_of_records(feats)
    chunks = record_chunks(feats, sums).numpy()
    with FeatureWriter(folder / "writer.h5", "bench", "bench", {}, dtype=dtype, overwrite=True) as writer:
        t0 = time.perf_counter()
        for k in range(batches):
            ids = [f"{k}_{i}" for i in range(batch)]
            if chunks_ready:
                writer.append_chunks(ids, chunks, {})
            else:
                writer.append(ids, feats.numpy(), {}, sums)
        seconds = time.perf_counter() - t0
    for leftover in folder.glob("writer.h5*"):
        leftover.unlink()
    return batch * batches / seconds


def bench_forward(device, precision, batch_size, channels_last, iters) -> float:
    from lesa.features.vgg import VGG19Conv54, precision_context

    model = VGG19Conv54().eval().to(device)
    x = torch.randn(batch_size, 3, 224, 224, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
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
    parser.add_argument("--images", type=int, default=None, help="default 16384 on GPU, 24 on CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on GPU, 8 on CPU")
    parser.add_argument("--workers", type=int, default=None, help="default: all CPU cores")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    n = args.images or (16384 if gpu else 24)
    batch = args.batch_size or (256 if gpu else 8)
    import os

    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    name = torch.cuda.get_device_name() if gpu else f"{os.cpu_count()}-core CPU, no GPU"
    print(f"device: {name}; {n} images, batch {batch}, {workers} workers, torch threads {torch.get_num_threads()}")

    rows = [("exact", "fp32", False, "float32"), ("exact", "tf32", True, "float32"),
            ("exact", "bf16", True, "float32"), ("exact", "bf16", True, "float16"),
            ("gpu", "tf32", True, "float32"), ("gpu", "bf16", True, "float32"),
            ("exact", "fp32", True, "float32")]  # lesa extract's default on a CPU; on a GPU: which layout for fp32
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp, n)
        print(f"decoder alone (exact, 1 process): {bench_decode(paths):.0f} img/s")
        for dtype in ("float32", "float16"):
            ready, copied = bench_writer(tmp, dtype, True), bench_writer(tmp, dtype, False)
            print(f"writer alone, {dtype} file: {ready:.0f} img/s from chunks built on the device "
                  f"(the GPU pipeline), {copied:.0f} img/s from features + checksums ({ready / copied:.2f}x)")
        for decoder in ("exact", "gpu") if gpu else ("exact",):
            rate, steady = bench_loader(paths, args.device, decoder, batch, workers)
            print(f"reading side alone ({decoder} decoder: read{' + decode + pack' if decoder == 'exact' else ''} "
                  f"in {workers} workers, no model): {rate:.0f} img/s, steady {steady:.0f} img/s")
        baseline = None
        print(f"{'pipeline (JPEG files -> HDF5)':<46} {'img/s':>9} {'baseline':>9} {'ratio':>6} "
              f"{'steady':>8}  main loop waited for")
        warmed = set()
        for decoder, precision, channels_last, dtype in rows:
            label = f"{decoder} decoder, {precision}{', channels-last' if channels_last else ''}, {dtype} file"
            if (decoder == "gpu" or precision == "tf32") and not gpu:
                print(f"{label:<46} {'not measured (needs a GPU)':>26}")
                continue
            if decoder not in warmed:  # one-off set-up (nvjpeg's is seconds) stays out of the figures
                bench_pipeline(paths[: 2 * batch], args.device, decoder, precision, batch, workers,
                               channels_last, tmp / "warm.h5", dtype)
                warmed.add(decoder)
            summary = bench_pipeline(paths, args.device, decoder, precision, batch, workers, channels_last,
                                     tmp / "bench.h5", dtype)
            rate = summary.images_per_second
            baseline = baseline or rate
            waits = ", ".join(f"{k} {v:.2f} s" for k, v in summary.waits.items())
            print(f"{label:<46} {rate:9.1f} {baseline:9.1f} {rate / baseline:6.2f} "
                  f"{summary.steady_images_per_second:8.1f}  {waits} (of {summary.seconds:.1f} s)")
        print(f"{'VGG forward alone':<34}")
        for precision, channels_last in (("fp32", False), ("fp32", True), ("tf32", True), ("bf16", True)):
            if precision == "tf32" and not gpu:
                continue
            rate = bench_forward(args.device, precision, batch, channels_last, iters=20 if gpu else 2)
            print(f"  {precision}{', channels-last' if channels_last else '':<16} {rate:9.1f} img/s")


if __name__ == "__main__":
    main()
