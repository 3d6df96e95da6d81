"""CRC32C and TFRecord -> HDF5 conversion: the code before the redesign and this one, side by side.

    python benchmarks/bench_tf_formats.py [--old /work/old] [--mb 400] [--records 500] [--repeats 3]

The baseline is the package at --old (the tree before the redesign, commit e958019: CRC32C in NumPy,
a hand-written snappy decoder); the figure is this checkout's (google_crc32c, cramjam). Each side
runs in its own Python process (PYTHONPATH = its tree), the two alternating, --repeats times; the
best time of each is kept. Rows:

- CRC32C of a --mb MB buffer (MB/s; the buffer is made before the clock starts);
- `read_tf_checkpoint` of a V2 bundle of --mb MB (MB/s; four float32 tensors);
- `convert_tfrecords` of a ZLIB TFRecord file of --records Open Images records (records/s).
The two files are written once beforehand by the tests' writers (tests/tf_writers.py); the features
have 60% zeros, as ReLU outputs, and 7186 labels.

Prints "figure, baseline, ratio" per row, with the machine named.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(task: str, arg: str) -> float:
    """Runs in the child process: the seconds one task takes with the ``lesa`` on its path."""
    import numpy as np

    if task == "crc":
        from lesa.tf_formats.crc32c import crc32c

        data = np.random.default_rng(0).integers(0, 256, int(arg) << 20, dtype=np.uint8)
        start = time.perf_counter()
        crc32c(data)
        return time.perf_counter() - start
    if task == "read":
        from lesa.tf_formats import read_tf_checkpoint

        start = time.perf_counter()
        read_tf_checkpoint(arg)
        return time.perf_counter() - start
    from lesa.datasets.tfrecord_source import convert_tfrecords

    out = Path(arg).with_name(f"out-{os.getpid()}.h5")
    start = time.perf_counter()
    convert_tfrecords([arg], out, dataset="openimages", progress=False)
    seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def write_inputs(path: Path, n: int, prefix: Path, mb: int) -> None:
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    from tf_writers import encode_example, write_tf_checkpoint, write_tfrecords

    rng = np.random.default_rng(0)
    write_tf_checkpoint(prefix, {f"layer{i}/weights": rng.standard_normal(mb << 16, dtype=np.float32)
                                 for i in range(4)})  # 4 x mb/4 MB

    def records():
        for i in range(n):
            feature = rng.random((196, 512), dtype=np.float32) * (rng.random((196, 512)) > 0.6)
            label = rng.integers(-1, 2, 7186).astype(np.int32)
            yield encode_example({"img_id": f"{i:016x}".encode(), "feature": feature.astype(np.float32).tobytes(),
                                  "label": label.tobytes()})

    write_tfrecords(path, records(), compression="ZLIB")


def timed(tree: Path, task: str, arg: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    result = subprocess.run([sys.executable, __file__, "--worker", task, arg], env=env, check=True,
                            capture_output=True, text=True)
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="/work/old", help="the tree before the redesign (the baseline)")
    parser.add_argument("--mb", type=int, default=400, help="CRC32C buffer size in MB")
    parser.add_argument("--records", type=int, default=500, help="records in the TFRecord file converted")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(worker(*args.worker))
        return
    trees = {"new": REPO, "old": Path(args.old)}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "train_feature_2018_04_ZLIB.tfrecords"
        prefix = Path(tmp) / "model.ckpt"
        write_inputs(source, args.records, prefix, args.mb)
        rows = {"crc": (str(args.mb), args.mb, "MB/s", f"CRC32C of a {args.mb} MB buffer"),
                "read": (str(prefix), args.mb, "MB/s", f"read_tf_checkpoint, V2 bundle of {args.mb} MB"),
                "convert": (str(source), args.records, "records/s",
                            f"convert-tfrecord, {args.records} ZLIB records ({source.stat().st_size >> 20} MB)")}
        from run import machine_line  # (benchmarks/run.py)

        print(f"machine: {machine_line()}; baseline: {args.old}")
        print("row, figure, baseline, ratio")
        for task, (arg, amount, unit, title) in rows.items():
            times = {side: [] for side in trees}
            for _ in range(args.repeats):  # alternating, so a slower spell of the machine hits both
                for side, tree in trees.items():
                    times[side].append(timed(tree, task, arg))
            best = {side: min(values) for side, values in times.items()}
            figure, baseline = amount / best["new"], amount / best["old"]
            print(f"{title}, {figure:.1f} {unit}, {baseline:.1f} {unit}, {figure / baseline:.1f}x")


if __name__ == "__main__":
    main()
