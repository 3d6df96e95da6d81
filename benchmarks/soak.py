"""Soak benchmark (not part of CI): long streamed training on NUS-WIDE-sized synthetic data, RSS over time.

1. ``lesa synth`` writes a planted NUS-WIDE-like dataset (1000 tags, 81 concepts, float16 features) with
   ``--scale`` x the real split sizes (161,789 train / 107,859 test images; scale 1 = 54 GB on disk).
   An existing dataset of the same sizes in ``--out``/data is reused.
2. ``lesa.train.train`` runs the NUS-WIDE zero-shot experiment for ``--iters`` iterations streaming the
   training file (``preload=none``), validating every ``--eval-every`` iterations on the first
   ``--n-validation`` records and writing a resume checkpoint every ``--checkpoint-every``.
3. A thread samples ``VmRSS`` of ``/proc/self/status`` every ``--sample-seconds``; each sample is
   tagged with the iteration reached. The report (``soak_report.json``, ``rss.csv``) gives RSS after
   warm-up, at the end, the peak, and the growth per 1,000 iterations over the second half of the run
   (a least-squares slope): memory is flat when that slope is ~0 and the peak is a small fraction of
   the training file.

Examples::

    python benchmarks/soak.py --scale 0.1 --iters 20000            # 3.2 GB train file, the full soak
    python benchmarks/soak.py --scale 0.05 --iters 2000 --eval-every 250 --checkpoint-every 250
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

NUS_TRAIN, NUS_TEST = 161789, 107859


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Background thread: (seconds, iteration, RSS bytes) every ``period`` seconds, also appended to
    ``live_csv`` as they come (an interrupted soak keeps its samples)."""

    def __init__(self, period: float, iteration, live_csv: Path):
        self.period, self.iteration = period, iteration
        self.live = open(live_csv, "w", buffering=1)
        self.live.write("seconds,iteration,rss_mb\n")
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            sample = (time.perf_counter() - self._t0, self.iteration(), rss_bytes())
            self.samples.append(sample)
            self.live.write(f"{sample[0]:.1f},{sample[1]},{sample[2] / 2**20:.1f}\n")
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter() - self._t0, self.iteration(), rss_bytes()))
        self.live.close()


def make_data(out: Path, n_train: int, n_test: int, n_tags: int, n_concepts: int, n_shared: int) -> dict:
    """Run ``lesa synth`` (reusing a complete dataset of the same sizes)."""
    data = out / "data"
    stamp = data / "soak_sizes.json"
    want = {"n_train": n_train, "n_test": n_test, "n_tags": n_tags, "n_concepts": n_concepts, "n_shared": n_shared}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want and (data / "test.h5").exists()):
        cmd = [sys.executable, "-m", "lesa", "synth", str(data), "--preset", "nus-wide", "--n-train", str(n_train),
               "--n-test", str(n_test), "--n-tags", str(n_tags), "--n-concepts", str(n_concepts),
               "--n-shared", str(n_shared), "--dtype", "float16", "--chunk", "512", "--no-progress"]
        print("writing:", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"  synthetic data written in {time.perf_counter() - t0:.0f} s", flush=True)
        stamp.write_text(json.dumps(want))
    return {"tag_list": data / "TagList1k.txt", "concepts": data / "Concepts81.txt",
            "label_vectors": data / "label_vectors.pkl", "train": data / "train.h5", "test": data / "test.h5"}


def block_medians(samples, n_iters: int, n_blocks: int = 10) -> list[tuple[int, float, float]]:
    """(first iteration, median RSS MB, max RSS MB) of the samples in each tenth of the iterations.

    The median is the steady training level; the max includes the validation passes (a batch of
    ``eval_batch_size`` records in memory), which come and go."""
    width = max(1, n_iters // n_blocks)
    blocks: dict[int, list[float]] = {}
    for _, it, rss in samples:
        if it < n_iters:
            blocks.setdefault(it // width * width, []).append(rss / 2**20)
    return [(k, sorted(v)[len(v) // 2], max(v)) for k, v in sorted(blocks.items())]


def slope_per_1000(samples, first_iteration: int) -> float:
    """Least-squares slope of RSS (MB) against iterations (per 1,000) for samples past an iteration."""
    pts = [(it, rss / 2**20) for _, it, rss in samples if it >= first_iteration]
    if len(pts) < 3 or pts[-1][0] == pts[0][0]:
        return float("nan")
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return 1000 * sxy / sxx if sxx else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/lesa_soak", help="folder for the data and the run")
    p.add_argument("--scale", type=float, default=0.1, help="fraction of the NUS-WIDE split sizes")
    p.add_argument("--iters", type=int, default=20000)
    p.add_argument("--n-test", type=int, default=0, help="test records (default 107,859 x scale)")
    p.add_argument("--n-tags", type=int, default=1000, help="tags (NUS-WIDE: 1000; fewer = faster steps on a CPU)")
    p.add_argument("--n-concepts", type=int, default=81, help="concepts (NUS-WIDE: 81)")
    p.add_argument("--n-shared", type=int, default=75, help="concepts that are also tags (NUS-WIDE: 75)")
    p.add_argument("--no-conv", action="store_true", help="model.conv=false (cheaper steps on a CPU)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--n-validation", type=int, default=0, help="validation records (default 5000 x scale)")
    p.add_argument("--shuffle", action="store_true", help="shuffled streaming (default: the original's order)")
    p.add_argument("--final-eval", action="store_true", help="also run the test reports at the end")
    p.add_argument("--sample-seconds", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)

    import torch

    from lesa.synth import config_for
    import lesa.train as training

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_train = max(64, int(NUS_TRAIN * args.scale))
    n_test = args.n_test or max(32, int(NUS_TEST * args.scale))
    files = make_data(out, n_train, n_test, args.n_tags, args.n_concepts, args.n_shared)
    train_bytes = files["train"].stat().st_size
    run_dir = out / "run"
    for stale in ("last.pt", "model.pt", "model_ES.pt", "log.csv"):
        (run_dir / stale).unlink(missing_ok=True)
    cfg = config_for(files, "nus_wide_zero_shot", run_dir, "soak", n_iters=args.iters, eval_interval=args.eval_every,
                     checkpoint_every=args.checkpoint_every, batch_size=args.batch_size, device="cpu")
    cfg.data.n_validation = args.n_validation or max(100, int(5000 * args.scale))
    cfg.data.preload = "none"  # stream: the point of the soak
    cfg.data.shuffle = args.shuffle
    cfg.model.conv = not args.no_conv

    done = [0]
    step = training.train_step

    def counted_step(run, batch):  # counts iterations for the RSS samples
        result = step(run, batch)
        done[0] += 1
        return result

    training.train_step = counted_step
    evals = []
    t0 = time.perf_counter()
    print(f"training {args.iters} iterations on {n_train} records ({train_bytes / 2**30:.2f} GiB float16), "
          f"validation {cfg.data.n_validation} records every {args.eval_every}, checkpoint every "
          f"{args.checkpoint_every}", flush=True)
    with RssSampler(args.sample_seconds, lambda: done[0], out / "rss_live.csv") as sampler:
        training.train(cfg, progress=False, final_eval=args.final_eval,
                       log=lambda msg: (evals.append(msg), print(f"  [{time.perf_counter() - t0:6.0f}s "
                                                              f"{rss_bytes() / 2**20:6.0f} MB] {msg}",
                                                              flush=True)))
    seconds = time.perf_counter() - t0
    samples = sampler.samples
    warm_it = min(args.iters, max(args.eval_every, args.checkpoint_every) + 1)
    warm = [s for s in samples if s[1] >= warm_it]
    rss_mb = [s[2] / 2**20 for s in samples]
    report = {
        "machine": f"{os.cpu_count()}-core CPU, torch threads {torch.get_num_threads()}, no GPU used",
        "iterations": done[0], "seconds": round(seconds, 1), "it_per_s": round(done[0] / seconds, 2),
        "train_records": n_train, "test_records": n_test, "train_file_gib": round(train_bytes / 2**30, 3),
        "rss_start_mb": round(rss_mb[0], 1),
        "rss_after_warmup_mb": round(warm[0][2] / 2**20, 1) if warm else None,
        "rss_end_mb": round(rss_mb[-1], 1), "rss_peak_mb": round(max(rss_mb), 1),
        "growth_after_warmup_mb": round((max(s[2] for s in warm) - warm[0][2]) / 2**20, 1) if warm else None,
        "slope_mb_per_1000_it_second_half": round(slope_per_1000(samples, done[0] // 2), 2),
        "file_over_peak_rss": round(train_bytes / (max(rss_mb) * 2**20), 2),
        "evaluations": len(evals),
    }
    blocks = block_medians(samples, done[0])
    steady = blocks[1:] if len(blocks) > 2 else blocks  # the first tenth includes start-up
    report["median_rss_per_tenth_mb"] = [round(m, 1) for _, m, _ in blocks]
    report["max_rss_per_tenth_mb"] = [round(x, 1) for _, _, x in blocks]
    report["steady_growth_mb"] = round(steady[-1][1] - steady[0][1], 1) if steady else None
    (out / "soak_report.json").write_text(json.dumps(report, indent=2))
    with open(out / "rss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "iteration", "rss_mb"])
        for sec, it, rss in samples:
            w.writerow([round(sec, 1), it, round(rss / 2**20, 1)])
    print("\nRSS per tenth of the run (median = training level, max = with a validation pass):")
    print(f"{'iterations':>12} {'median MB':>10} {'max MB':>8}")
    width = max(1, done[0] // 10)
    for start, median, peak in blocks:
        print(f"{f'{start}-{start + width - 1}':>12} {median:>10.0f} {peak:>8.0f}")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
