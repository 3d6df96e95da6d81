"""Speed of what users feel, each figure next to a baseline measured in the same run, and their ratio.

    python benchmarks/run.py [--quick] [--only step reading evaluation inference] [--out FILE.md]
    python benchmarks/run.py --baseline /path/to/another/lesa/checkout   # that code vs this one

Sections (the machine and its load are printed with the table; rows needing a GPU run only where
one is visible):
- step: the NUS-WIDE zero-shot training step (batch 32, 925 seen / 81 unseen labels, T = 10, every
  loss, TF1 RMSProp, batch-norm update) on the CPU, against the naive step with the original's dense
  (B, C, C) ranking loss; on a GPU every train.step mode, fp32 and tf32.
- reading: records/s streamed from a float32 and a float16 feature file through the DataLoader,
  with 0, 1 and 2 worker processes.
- evaluation: average precision and top-K F1 of NUS-WIDE's whole test set (107,859 x 1,006 scores;
  benchmarks/bench_metrics.py has the details).
- inference: images/s of the model's scores, fp32 and bf16.

``--baseline DIR`` runs every section twice, in fresh processes, alternating between the code in
DIR and this checkout, and adds the ratio of the two: how a change moved the figures on this machine.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

N_SEEN, N_UNSEEN, BATCH = 925, 81, 32  # NUS-WIDE zero-shot (original: batch 32, T = 10)
SECTIONS = ("step", "reading", "evaluation", "inference")


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "?"
    bf16 = ", bfloat16 units" if " avx512_bf16" in flags or " amx_bf16" in flags else ", no bfloat16 units"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()}-core CPU ({cpu}, {isa}{bf16}), {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; load average {load}")


def median_seconds(fn, repeat: int, warmup: int = 1, sync=None) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def nus_model(device="cpu", seed: int = 0):
    from lesa import LESA, LESAConfig, TFRMSprop

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = LESA(rng.normal(size=(N_SEEN, 300)), rng.normal(size=(N_UNSEEN, 300)), LESAConfig()).to(device).train()
    return model, TFRMSprop(model.parameters(), lr=1e-3)


def nus_batch(device="cpu", seed: int = 0, positives: float = 7.0):
    g = torch.Generator().manual_seed(seed)
    features = torch.relu(torch.randn(BATCH, 196, 512, generator=g))
    labels = torch.where(torch.rand(BATCH, N_SEEN, generator=g) < positives / N_SEEN, 1.0, -1.0)
    return features.to(device), labels.to(device)


def plain_step(model, optimizer, features, labels, dense: bool = False) -> None:
    """One step as the training loop takes it (``dense``: the original's (B, C, C) ranking loss)."""
    from lesa.losses import ranking_loss_dense

    out = model(features)
    losses = model.loss(out, labels)
    total = losses["total"] - losses["rank"] + ranking_loss_dense(out.logits, labels) if dense else losses["total"]
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


# -- sections: each returns rows {figure: (value, unit)} -----------------------------------------------
def bench_step(quick: bool) -> list[dict]:
    repeat = 3 if quick else 8
    model, opt = nus_model()
    features, labels = nus_batch()
    ours = median_seconds(lambda: plain_step(model, opt, features, labels), repeat, warmup=2)
    model, opt = nus_model()
    dense = median_seconds(lambda: plain_step(model, opt, features, labels, dense=True), repeat, warmup=2)
    rows = [dict(figure="training step, CPU (B=32, 925 seen / 81 unseen, T=10, all losses, TF RMSProp, BN)",
                 value=ours * 1e3, unit="ms", baseline=dense * 1e3,
                 baseline_is="the same step with the original's dense B*C*C ranking loss")]
    if torch.cuda.is_available():
        rows += bench_step_gpu(quick)
    return rows


def bench_step_gpu(quick: bool) -> list[dict]:
    from lesa.device import set_tf32
    from lesa.step import TrainStep

    features, labels = nus_batch("cuda")
    rows, base = [], None
    for mode in ("eager", "cuda_graph", "compile+cuda_graph"):
        for precision in ("fp32", "tf32"):
            set_tf32(precision == "tf32")
            model, opt = nus_model("cuda")
            step = TrainStep(model, opt, mode=mode, max_positives=None if mode == "eager" else N_SEEN)
            t = median_seconds(lambda: step(features, labels), 50 if quick else 500, warmup=5,
                               sync=torch.cuda.synchronize)
            base = base or t
            rows.append(dict(figure=f"training step, GPU {mode} {precision} ({torch.cuda.get_device_name(0)})",
                             value=t * 1e3, unit="ms", baseline=base * 1e3, baseline_is="GPU eager fp32"))
    set_tf32(False)
    return rows


def _feature_file(path, n: int, dtype: str) -> None:
    from lesa.datasets.h5 import FeatureWriter

    rng = np.random.default_rng(0)
    with FeatureWriter(path, "nus_wide", "Train", {"labels_81": 81}, dtype=dtype) as writer:
        for a in range(0, n, 128):
            b = min(n, a + 128)
            feats = np.maximum(rng.standard_normal((b - a, 196, 512), dtype=np.float32), 0)
            writer.append([str(i) for i in range(a, b)], feats, {"labels_81": np.ones((b - a, 81), np.int8)})
        writer.finish()


def _reader(split, workers: int):
    """A RangeReader with ``workers`` reading processes (the code before the DataLoader called
    them read_workers)."""
    from lesa.datasets.stream import RangeReader

    name = "workers" if "workers" in inspect.signature(RangeReader).parameters else "read_workers"
    return RangeReader(split, {"y": ("labels_81", None)}, chunk_mb=64, progress=False, **{name: workers})


def bench_reading(quick: bool) -> list[dict]:
    """Training batches streamed from a file in the page cache: two passes, records/s."""
    from lesa.datasets.h5 import open_features
    from lesa.datasets.stream import BatchPlan, TrainStream

    n = 1024 if quick else 4096
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float16"):
            path = f"{tmp}/{dtype}.h5"
            _feature_file(path, n, dtype)
            split = open_features(path)
            rates = {}
            for workers in (0, 1, 2):
                stream = TrainStream(_reader(split, workers), BatchPlan(0, n, BATCH))
                for _ in range(2 * -(-n // BATCH)):  # (the first pass also warms the page cache)
                    next(stream)
                start = time.perf_counter()
                for _ in range(2 * -(-n // BATCH)):
                    next(stream)
                rates[workers] = 2 * n / (time.perf_counter() - start)
                stream.close()
            split.close()
            for workers in (0, 1, 2):
                rows.append(dict(figure=f"streamed training batches, {dtype} file, data.workers = {workers}",
                                 value=rates[workers], unit="records/s", baseline=rates[0],
                                 baseline_is="data.workers = 0 (read in the training process)"))
    return rows


def synthetic_scores(N: int, C: int, positives_per_image: float, seed: int, unannotated: float = 0.05):
    """Scores (N, C) float32 and labels (N, C) int8 with ~``positives_per_image`` positives, uneven
    label frequencies, some labels 0, and positives scoring a little higher (a trained model's look)."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.5, 2.0 * positives_per_image / C, C).clip(0, 0.5)
    labels = np.where(rng.random((N, C), dtype=np.float32) < rate, 1, -1).astype(np.int8)
    labels[rng.random((N, C), dtype=np.float32) < unannotated] = 0
    scores = rng.standard_normal((N, C), dtype=np.float32)
    scores += labels > 0
    return scores, labels


def bench_evaluation(quick: bool) -> list[dict]:
    from lesa import metrics

    N, C = (20_000, 1_006) if quick else (107_859, 1_006)
    scores, labels = synthetic_scores(N, C, 7.0, seed=2)
    ap = median_seconds(lambda: metrics.average_precision(scores, labels), 1, warmup=0)
    topk = median_seconds(lambda: metrics.topk_f1_many(scores, labels, [3, 5]), 1, warmup=0)
    sort = median_seconds(lambda: np.sort(scores, axis=0), 1, warmup=0)
    return [dict(figure=f"average precision of {N:,} x {C:,} scores (NUS-WIDE's generalised test)", value=ap,
                 unit="s", baseline=sort, baseline_is="np.sort of the same matrix"),
            dict(figure=f"top-3 and top-5 F1/P/R of {N:,} x {C:,} scores", value=topk, unit="s", baseline=sort,
                 baseline_is="np.sort of the same matrix")]


def bench_inference(quick: bool) -> list[dict]:
    from lesa.evaluate import predict

    model, _ = nus_model()
    n = 512 if quick else 2048
    features = torch.relu(torch.randn(n, 196, 512))
    rates = {p: n / median_seconds(lambda: predict(model, features, batch_size=512, precision=p), 1)
             for p in ("fp32", "bf16")}
    rows = [dict(figure=f"inference, CPU, {p} (batches of 512)", value=r, unit="images/s", baseline=rates["fp32"],
                 baseline_is="fp32") for p, r in rates.items()]
    if torch.cuda.is_available():
        model = model.cuda()
        feats = torch.relu(torch.randn(4096 * 4, 196, 512, device="cuda")).half()
        gpu = {p: feats.shape[0] / median_seconds(lambda: predict(model, feats, batch_size=4096, precision=p), 3,
                                                  sync=torch.cuda.synchronize) for p in ("fp32", "tf32", "bf16")}
        rows += [dict(figure=f"inference, GPU batch 4096, {p} ({torch.cuda.get_device_name(0)})", value=r,
                      unit="images/s", baseline=gpu["fp32"], baseline_is="GPU fp32") for p, r in gpu.items()]
    return rows


BENCHES = {"step": bench_step, "reading": bench_reading, "evaluation": bench_evaluation, "inference": bench_inference}


# -- the table ---------------------------------------------------------------------------------------
def _fmt(value: float, unit: str) -> str:
    return f"{value:,.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def _speedup(row: dict, other: float) -> str:
    """How many times better ``value`` is than ``other`` (rates: higher is better; times: lower)."""
    better_high = row["unit"].endswith("/s")
    ratio = row["value"] / other if better_high else other / row["value"]
    return f"{ratio:.2f}x"


def table(rows: list[dict], baseline_rows: list[dict] | None = None) -> str:
    lines = [f"Machine: {machine_line()}", ""]
    if baseline_rows is None:
        lines += ["| figure | value | baseline (same run) | ratio |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['figure']} | {_fmt(r['value'], r['unit'])} | {_fmt(r['baseline'], r['unit'])}: "
                  f"{r['baseline_is']} | {_speedup(r, r['baseline'])} |" for r in rows]
    else:
        old = {r["figure"]: r for r in baseline_rows}
        lines += ["| figure | this code | baseline code (same run) | ratio |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['figure']} | {_fmt(r['value'], r['unit'])} | "
                  f"{_fmt(old[r['figure']]['value'], r['unit']) if r['figure'] in old else '-'} | "
                  f"{_speedup(r, old[r['figure']]['value']) if r['figure'] in old else '-'} |" for r in rows]
    return "\n".join(lines)


def _in_subprocess(code_dir: str, section: str, quick: bool) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=code_dir)
    cmd = [sys.executable, __file__, "--only", section, "--json"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:  # e.g. an older checkout without what the section calls: its cells stay "-"
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"{section} could not run with the code in {code_dir}: {last}", file=sys.stderr)
        return []
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--baseline", metavar="DIR", help="another lesa checkout: measured alternately with this one")
    parser.add_argument("--out", metavar="FILE.md", help="also write the table to this file")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # (for --baseline's subprocesses)
    args = parser.parse_args(argv)
    if args.baseline:
        here = str(Path(__file__).resolve().parents[1])
        rows, base = [], []
        for section in args.only:  # alternating, so that a change of load hits both alike
            base += _in_subprocess(str(Path(args.baseline).resolve()), section, args.quick)
            rows += _in_subprocess(here, section, args.quick)
        text = table(rows, base)
    else:
        rows = []
        for section in args.only:
            print(f"measuring {section} ...", file=sys.stderr)
            rows += BENCHES[section](args.quick)
        if args.json:
            print(json.dumps(rows))
            return 0
        text = table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
