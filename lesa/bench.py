"""Speed benchmarks (issue "Speed"): every figure next to a baseline measured in the same run
(or, where that cannot run here, a recorded figure, marked as such), and their ratio.

``lesa bench [--quick]`` and ``benchmarks/run.py`` print one markdown table. Timings are wall
clock on whatever machine runs them; the table names the machine and its load average (on a
shared machine, other processes slow every row alike, so compare ratios). Rows needing a GPU say
"not measured" when none is present.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from lesa import LESA, LESAConfig, TFRMSprop, metrics
from lesa.losses import ranking_loss, ranking_loss_dense
from lesa.model import CPU_INFERENCE_SLICE

# NUS-WIDE zero-shot shape (original: 925 seen, 81 unseen labels, batch 32, T=10)
N_SEEN, N_UNSEEN, BATCH = 925, 81, 32
NUS_TEST_IMAGES = 107_859
OPENIMAGES_LABELS = 7_186
TF_STEP_MS = 613.0  # the original TF1 graph, batch-32 step on this 2-core CPU (recorded by the issue)
NOT_MEASURED = "not measured (no GPU in this session)"


@dataclass
class Row:
    figure: str
    value: str
    baseline: str
    ratio: str
    note: str = ""


def median_seconds(fn, repeat: int, warmup: int = 1, sync=None) -> float:
    """Median seconds of ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _ratio(baseline: float, ours: float) -> str:
    return f"{baseline / ours:.1f}x" if ours > 0 else "-"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()}-core CPU ({cpu}), {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; load average {load}")


# -- training step ----------------------------------------------------------------------------------
def nus_model(seed: int = 0, device="cpu") -> tuple[LESA, TFRMSprop]:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = LESA(rng.normal(size=(N_SEEN, 300)), rng.normal(size=(N_UNSEEN, 300)), LESAConfig()).to(device).train()
    return model, TFRMSprop(model.parameters(), lr=1e-3)


def nus_batch(seed: int = 0, device="cpu", positives: float = 7.0):
    g = torch.Generator().manual_seed(seed)
    features = torch.relu(torch.randn(BATCH, 196, 512, generator=g))
    labels = torch.where(torch.rand(BATCH, N_SEEN, generator=g) < positives / N_SEEN, 1.0, -1.0)
    return features.to(device), labels.to(device)


def dense_step(model: LESA, optimizer: TFRMSprop, features, labels) -> None:
    """The naive step: the original's (B, C, C) ranking loss, plain eager autograd."""
    out = model(features)
    losses = model.loss(out, labels)
    total = losses["total"] - losses["rank"] + ranking_loss_dense(out.logits, labels)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


def bench_training_step(quick: bool) -> list[Row]:
    from lesa.fast_step import make_train_step

    repeat = 3 if quick else 8
    model, opt = nus_model()
    features, labels = nus_batch()
    step = make_train_step(model, opt, mode="eager")  # the CPU path: P = the batch's most positives
    cpu0 = time.process_time()
    ours = median_seconds(lambda: step(features, labels), repeat, warmup=2)
    cpu_per_step = (time.process_time() - cpu0) / (repeat + 2)
    model2, opt2 = nus_model()
    dense = median_seconds(lambda: dense_step(model2, opt2, features, labels), repeat, warmup=2)
    rows = [
        Row("training step, CPU eager (B=32, 925 seen/81 unseen, T=10, all losses, TF RMSProp, BN)",
            f"{ours * 1e3:.0f} ms", f"{TF_STEP_MS:.0f} ms: original TF1 graph (recorded figure, not this run)",
            _ratio(TF_STEP_MS / 1e3, ours),
            f"process CPU time {cpu_per_step * 1e3:.0f} ms/step over {torch.get_num_threads()} threads "
            "(wall = CPU / threads on an idle machine)"),
        Row("training step, CPU eager (same)", f"{ours * 1e3:.0f} ms",
            f"{dense * 1e3:.0f} ms: naive eager step with the dense B*C*C ranking loss (this run)",
            _ratio(dense, ours)),
    ]
    if torch.cuda.is_available():
        rows += bench_training_step_gpu(quick)
    else:
        for mode in ("eager", "cuda_graph", "compile+cuda_graph"):
            rows.append(Row(f"training step, GPU {mode} (same shape, features on the GPU)", NOT_MEASURED,
                            "GPU eager step (same run)", "-", "goal <= 0.6 ms/step on an H100/H200"))
    return rows


def cuda_block_seconds(fn, n: int, blocks: int = 3) -> float:
    """Median over ``blocks`` of (GPU time of ``n`` back-to-back calls) / n, timed with CUDA events
    around the block (no sync between calls, as in the training loop)."""
    per_call = []
    for _ in range(blocks):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(n):
            fn()
        stop.record()
        stop.synchronize()
        per_call.append(start.elapsed_time(stop) / 1e3 / n)
    return float(np.median(per_call))


def resident_nus_data(n: int, seed: int = 0):
    """A NUS-WIDE-shaped training set resident on the GPU: features float16 (n,196,512), labels
    int8 (n,925) with ~7 positives per image, as ``preload = "gpu"`` holds them."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    features = torch.empty(n, 196, 512, dtype=torch.float16, device="cuda")
    for i in range(0, n, 1024):  # in slices: no float32 copy of the whole set
        chunk = features[i:i + 1024]
        chunk.copy_(torch.relu(torch.randn(chunk.shape, device="cuda", generator=g)))
    labels = torch.where(torch.rand(n, N_SEEN, device="cuda", generator=g) < 7.0 / N_SEEN, 1, -1).to(torch.int8)
    return features, labels


def bench_training_step_gpu(quick: bool) -> list[Row]:
    """The training step on the GPU, each iteration including its data step: 32 random rows of a
    resident float16 training set gathered and converted to float32 on the GPU."""
    from lesa.fast_step import make_train_step, max_positives_of
    from lesa.train import set_precision, set_tf32

    set_tf32(False)  # as lesa train on a GPU
    name = torch.cuda.get_device_name(0)
    features, labels = resident_nus_data(4096 if quick else 16384)
    most = max_positives_of(labels)  # the static ranking-loss padding lesa train derives the same way
    g = torch.Generator(device="cuda").manual_seed(1)

    def next_batch():
        rows = torch.randint(features.shape[0], (BATCH,), device="cuda", generator=g)
        return features[rows].float(), labels[rows].float()

    data_only = cuda_block_seconds(next_batch, 200 if quick else 2000)
    times: dict[str, float | Exception] = {}
    for key in ("eager", "cuda_graph", "compile+cuda_graph", "cuda_graph tf32", "compile+cuda_graph tf32",
                "cuda_graph tf32x3", "compile+cuda_graph tf32x3"):
        mode, _, precision = key.partition(" ")  # precision: train.precision ("" = fp32)
        model, opt = nus_model(device="cuda")
        set_precision(precision or "fp32", model)
        try:
            step = make_train_step(model, opt, max_positives=most, mode=mode)
            for _ in range(5):  # warm-up: capture, compilation, cuDNN/cuBLAS handles
                step(*next_batch())
            n = (20 if quick else 200) if mode == "eager" else (200 if quick else 2000)
            times[key] = cuda_block_seconds(lambda: step(*next_batch()), n)
        except Exception as exc:  # e.g. no triton for compile: report, do not stop the table
            times[key] = exc
    set_tf32(False)
    base = times["eager"]
    rows = [Row(f"data step alone, GPU ({name}): gather 32 rows of a resident float16 set, to float32",
                f"{data_only * 1e3:.3f} ms", "-", "-", "included in every step row below")]
    for mode, t in times.items():
        if isinstance(t, Exception):
            rows.append(Row(f"training step, GPU {mode}", f"failed: {type(t).__name__}: {t}"[:160], "", "-"))
            continue
        ok = not isinstance(base, Exception)
        step_mode, _, precision = mode.partition(" ")
        precision = {"tf32": "TF32 (train.precision = tf32)", "tf32x3": "conv + attention product as 3xTF32, "
                     "float32 accuracy (train.precision = tf32x3)"}.get(precision, "full float32")
        rows.append(Row(f"training step incl. data step, GPU {step_mode}, {precision} ({name})",
                        f"{t * 1e3:.3f} ms",
                        f"{base * 1e3:.2f} ms: GPU eager (this run)" if ok else "-", _ratio(base, t) if ok else "-",
                        f"goal <= 0.6 ms; 200,000 steps: {200_000 * t / 60:.1f} min"))
    return rows


PAPER_ITERS, PAPER_EVAL_INTERVAL = 200_000, 4_000  # the NUS-WIDE schedule


def n_validations(n_iters: int, interval: int) -> int:
    """Validations of a run: at every multiple of ``interval`` and at the last iteration."""
    return -(-n_iters // interval) + (0 if (n_iters - 1) % interval == 0 else 1)


def schedule_estimates(run_seconds, steps, n: int) -> tuple[list, float | None]:
    """Split ``lesa train``'s time into set-up, per iteration and per validation, and estimate the
    paper's schedule from them. ``run_seconds(step, n_iters, eval_interval)`` times one run.

    - per iteration: each step trains m and 3m iterations (m = n for the last step, n/5 for the
      others) with the same two validations (first and last iteration): (t(3m) - t(m)) / 2m;
    - per validation (with its log row and checkpoints): the last step trains 3m iterations again,
      validating every m/2; the extra time over the extra validations;
    - set-up (data, model, graph capture, final checkpoint): what is left of the m run.
    Returns ([(step, m, t(m), t(3m), per_it, set-up, estimate) or the exception], per_validation)."""
    results, per_validation = [], None
    for step in steps:
        m = n if step == steps[-1] else max(n // 5, 2)  # the slower (eager) step runs fewer
        try:
            short, long = run_seconds(step, m, 10 * m), run_seconds(step, 3 * m, 10 * m)
            if step == steps[-1]:
                interval = max(m // 2, 1)
                extra = n_validations(3 * m, interval) - n_validations(3 * m, 10 * m)
                per_validation = (run_seconds(step, 3 * m, interval) - long) / extra
            results.append((step, m, short, long))
        except Exception as exc:
            results.append(exc)
    val = per_validation or 0.0
    out = []
    for r in results:
        if isinstance(r, Exception):
            out.append(r)
            continue
        step, m, short, long = r
        per_it = (long - short) / (2 * m)
        setup = short - m * per_it - 2 * val
        estimate = setup + PAPER_ITERS * per_it + n_validations(PAPER_ITERS, PAPER_EVAL_INTERVAL) * val
        out.append((step, m, short, long, per_it, setup, estimate))
    return out, per_validation


def bench_schedule(quick: bool, device: str = "cuda", iters: int | None = None, n_val: int | None = None,
                   steps=("eager", "cuda_graph")) -> list[Row]:
    """``lesa train`` end to end (NUS-WIDE zero-shot shapes, synthetic float16 features preloaded
    on the GPU, checkpoints written), split into set-up, per-iteration and per-validation time
    (see ``schedule_estimates``) and scaled to the paper's 200,000 iterations and 51 validations."""
    if device == "cuda" and not torch.cuda.is_available():
        return [Row("training schedule, GPU (lesa train, 200,000 its + 51 validations)", NOT_MEASURED,
                    "train.step = eager (same run)", "-", "goal about 2 minutes")]
    import tempfile

    from lesa.synth import SynthSpec, config_for, write_synthetic
    from lesa.train import train

    n_val = n_val or (1000 if quick else 5000)
    with tempfile.TemporaryDirectory() as tmp:
        spec = SynthSpec(n_train=n_val + 2048, n_test=256, n_tags=1000, n_concepts=81, n_shared=75,
                         dtype="float16", seed=0)
        files = write_synthetic(f"{tmp}/data", spec, progress=False)
        runs = []

        def run_seconds(step: str, n_iters: int, interval: int) -> float:
            runs.append(step)
            cfg = config_for(files, "nus_wide_zero_shot", f"{tmp}/run{len(runs)}", step, n_iters=n_iters,
                             eval_interval=interval, device=device, step=step)
            cfg.data.n_validation, cfg.data.preload = n_val, "gpu" if device == "cuda" else "ram"
            t = time.perf_counter()
            train(cfg, progress=False, final_eval=False, log=lambda *a: None)
            return time.perf_counter() - t

        results, per_validation = schedule_estimates(run_seconds, steps, iters or (600 if quick else 2000))
    where = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    val_text = f"{per_validation:.2f} s per validation on {n_val:,} images" if per_validation is not None else \
        "validations not timed"
    rows, base = [], None
    for step, r in zip(steps, results):
        if isinstance(r, Exception):
            rows.append(Row(f"training schedule, train.step={step}", f"failed: {type(r).__name__}: {r}"[:160], "", "-"))
            continue
        _, m, short, long, per_it, setup, full = r
        if per_it <= 0:
            rows.append(Row(f"training schedule, train.step={step}", f"not resolved: {3 * m} its took {long:.1f} s, "
                            f"{m} its {short:.1f} s (a noisy machine)", "", "-"))
            continue
        if step == steps[0]:
            base = full
        other = base is not None and step != steps[0]
        rows.append(Row(
            f"training schedule ({where}), train.step={step}: lesa train, 200,000 its + 51 validations, from "
            f"runs of {m:,} ({short:.1f} s) and {3 * m:,} its ({long:.1f} s)",
            f"{full / 60:.1f} min ({per_it * 1e3:.2f} ms/it, {val_text}, set-up {setup:.1f} s)",
            f"{base / 60:.1f} min: train.step={steps[0]} (this run)" if other else "-",
            _ratio(base, full) if other else "-", "goal about 2 minutes"))
    return rows


# -- ranking loss memory ----------------------------------------------------------------------------
def _rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _ranking_case(kind: str, C: int, B: int, seed: int = 0) -> dict:
    """Forward + backward of one ranking loss; returns seconds and the peak RSS increase (bytes).
    Run in a fresh process (see ``_measure_in_subprocess``) so the peak belongs to this case."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, generator=g).requires_grad_()
    labels = torch.where(torch.rand(B, C, generator=g) < 8.0 / C, 1.0, -1.0)
    labels[torch.rand(B, C, generator=g) < 0.5] = 0.0  # Open Images: most labels unannotated
    labels[0, :64] = 1.0  # an image with many positives
    fn = ranking_loss if kind == "sparse" else ranking_loss_dense
    fn(logits[:2, :8], labels[:2, :8]).backward()  # first-call set-up outside the measurement
    logits.grad = None
    with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the peak (VmHWM) to the current RSS
        f.write("5")
    before = _rss_bytes("VmRSS")
    t = time.perf_counter()
    loss = fn(logits, labels)
    loss.backward()
    seconds = time.perf_counter() - t
    peak = _rss_bytes("VmHWM")
    return {"seconds": seconds, "peak_bytes": max(peak - before, 0), "value": float(loss)}


def _measure_in_subprocess(kind: str, C: int, B: int) -> dict:
    code = f"import json; from lesa.bench import _ranking_case; print(json.dumps(_ranking_case({kind!r}, {C}, {B})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_ranking_loss(quick: bool) -> list[Row]:
    B, C = BATCH, OPENIMAGES_LABELS
    small = 1024 if quick else 2048
    sparse = _measure_in_subprocess("sparse", C, B)
    dense_small = _measure_in_subprocess("dense", small, B)
    sparse_small = _measure_in_subprocess("sparse", small, B)
    scale = (C / small) ** 2  # the dense loss is O(B * C^2) in time and memory
    dense_time, dense_mem = dense_small["seconds"] * scale, dense_small["peak_bytes"] * scale
    gb = 1024 ** 3
    same = abs(sparse_small["value"] - dense_small["value"]) <= 1e-6 * max(1.0, abs(dense_small["value"]))
    return [
        Row(f"ranking loss fwd+bwd time, CPU, B={B}, C={C} (Open Images)", f"{sparse['seconds'] * 1e3:.0f} ms",
            f"{dense_time:.1f} s: dense B*C*C, measured at C={small} ({dense_small['seconds']:.2f} s) "
            "and scaled by (C/{0})^2".format(small), _ratio(dense_time, sparse["seconds"]),
            f"values equal at C={small}: {same}"),
        Row(f"ranking loss peak memory, CPU, B={B}, C={C}", f"{sparse['peak_bytes'] / gb * 1024:.0f} MB",
            f"{dense_mem / gb:.1f} GB: dense, peak RSS at C={small} ({dense_small['peak_bytes'] / gb:.2f} GB) "
            f"scaled by (C/{small})^2", _ratio(dense_mem, max(sparse["peak_bytes"], 1 << 20)),
            "peak RSS increase of a fresh process"),
    ]


# -- evaluation -------------------------------------------------------------------------------------
def synthetic_scores(N: int, C: int, positives_per_image: float, seed: int, unannotated: float = 0.05):
    """Scores (N, C) float32 and labels (N, C) int8 with ~``positives_per_image`` positives, some
    labels 0, and positives scoring a little higher (a trained model's look)."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.5, 2.0 * positives_per_image / C / 1.0, C).clip(0, 0.5)  # uneven label frequencies
    labels = np.where(rng.random((N, C), dtype=np.float32) < rate, 1, -1).astype(np.int8)
    labels[rng.random((N, C), dtype=np.float32) < unannotated] = 0
    scores = rng.standard_normal((N, C), dtype=np.float32)
    scores += labels > 0
    return scores, labels


def evaluate_protocol(zsl, gzsl) -> dict:
    """mAP and overall F1@3/5 of the zero-shot (81) and generalised (1006) tables, as
    ``lesa.evaluate.make_table`` computes them."""
    out = {}
    for name, (s, y) in (("zsl", zsl), ("gzsl", gzsl)):
        out[f"{name}_mAP"] = float(np.mean(metrics.average_precision(s, y)))
        for k, (f1, _, _) in metrics.topk_f1_many(s, y, (3, 5)).items():
            out[f"{name}_F1@{k}"] = f1
    return out


def sklearn_ap(scores, labels, classes) -> np.ndarray:
    from sklearn.metrics import average_precision_score

    out = np.zeros(len(classes))
    for i, c in enumerate(classes):
        y = labels[:, c]
        if not (y > 0).any():
            continue
        keep = y != 0
        out[i] = average_precision_score(y[keep] > 0, scores[keep, c])
    return out


def bench_evaluation(quick: bool) -> list[Row]:
    N = 20_000 if quick else NUS_TEST_IMAGES
    zsl = synthetic_scores(N, N_UNSEEN, 2.5, seed=1)
    gzsl = synthetic_scores(N, N_UNSEEN + N_SEEN, 7.0, seed=2)
    repeat = 1 if quick else 3  # median of 3 after a warm-up: one run swings by +-20% on a shared VM
    ours = median_seconds(lambda: evaluate_protocol(zsl, gzsl), repeat)
    ours_ap = median_seconds(lambda: [metrics.average_precision(*zsl), metrics.average_precision(*gzsl)], repeat)
    ap_ours = [metrics.average_precision(*zsl), metrics.average_precision(*gzsl)]

    # baseline: a per-class scikit-learn loop, timed on a subset of classes, scaled per class
    n_sub = 10 if quick else 40
    sklearn_ap(*zsl, [0])  # import scikit-learn and warm it up outside the timing
    rng = np.random.default_rng(0)
    sub_z = np.sort(rng.choice(N_UNSEEN, n_sub // 4, replace=False))
    sub_g = np.sort(rng.choice(N_UNSEEN + N_SEEN, n_sub, replace=False))
    t = time.perf_counter()
    ref_z = sklearn_ap(*zsl, sub_z)
    tz = time.perf_counter() - t
    t = time.perf_counter()
    ref_g = sklearn_ap(*gzsl, sub_g)
    tg = time.perf_counter() - t
    sk_total = tz / len(sub_z) * N_UNSEEN + tg / len(sub_g) * (N_UNSEEN + N_SEEN)
    diff = max(np.abs(ap_ours[0][sub_z] - ref_z).max(), np.abs(ap_ours[1][sub_g] - ref_g).max())

    # top-k baseline: the original's full argsort per image, timed on a subset of images, scaled
    rows_sub = slice(0, min(N, 5_000))
    t = time.perf_counter()
    for s, _ in (zsl, gzsl):
        for k in (3, 5):
            metrics.top_k_indices_exact(s[rows_sub], k)
    argsort_total = (time.perf_counter() - t) * N / (rows_sub.stop - rows_sub.start)
    size = f"{N:,} x {N_UNSEEN} (ZSL) and {N:,} x {N_UNSEEN + N_SEEN} (GZSL)"
    return [
        Row(f"evaluation: mAP + F1@3/5, ZSL and GZSL, CPU, {size} (median of {repeat})", f"{ours:.2f} s",
            f"{sk_total + argsort_total:.1f} s: per-class scikit-learn average_precision_score loop "
            f"({sk_total:.1f} s, timed on {len(sub_z) + len(sub_g)} classes and scaled per class) + the "
            f"original's full argsort top-k ({argsort_total:.1f} s, timed on {rows_sub.stop:,} images, scaled)",
            _ratio(sk_total + argsort_total, ours), "goal <= 5 s"),
        Row("evaluation: AP only (ZSL + GZSL), CPU", f"{ours_ap:.2f} s",
            f"{sk_total:.1f} s: per-class scikit-learn loop (scaled as above)", _ratio(sk_total, ours_ap),
            f"max |AP - sklearn AP| = {diff:.1e}; goal >= 20x"),
    ]


# -- inference --------------------------------------------------------------------------------------
def bench_inference(quick: bool) -> list[Row]:
    from lesa.fast_step import predict

    model, _ = nus_model()
    n = 1024 if quick else 2048
    features = torch.relu(torch.randn(n, 196, 512))
    ours = median_seconds(lambda: predict(model, features, batch_size=512), 1 if quick else 2)

    def whole_batches():
        with torch.no_grad():
            model.eval()
            for i in range(0, n, 512):
                model(features[i:i + 512])

    base = median_seconds(whole_batches, 1 if quick else 2)
    bf16 = median_seconds(lambda: predict(model, features, batch_size=512, precision="bf16"), 1 if quick else 2)
    ref = predict(model, features[:64])["gzs_logits"]
    got = predict(model, features[:64], precision="bf16")["gzs_logits"]
    rows = [Row(f"inference, CPU, batches of 512 (zs + gzs scores; forward in slices of {CPU_INFERENCE_SLICE})",
                f"{n / ours:,.0f} images/s", f"{n / base:,.0f} images/s: one forward per batch of 512 (this run)",
                _ratio(base, ours)),
            Row("same, bf16 autocast (`lesa evaluate --precision bf16`)", f"{n / bf16:,.0f} images/s",
                f"{n / ours:,.0f} images/s: fp32, the row above", _ratio(ours, bf16),
                f"scores vs fp32: {float((got - ref).norm() / ref.norm()):.1e} rel")]
    if torch.cuda.is_available():
        from lesa.train import set_tf32

        set_tf32(False)
        model = model.cuda()
        feats, _ = resident_nus_data(4096 * 8)  # float16 on the GPU, converted per batch
        name = torch.cuda.get_device_name(0)
        rates = {}
        for precision in ("fp32", "tf32", "bf16"):
            t = median_seconds(lambda: predict(model, feats, batch_size=4096, precision=precision), 3,
                        sync=torch.cuda.synchronize)
            rates[precision] = feats.shape[0] / t
        ref = predict(model, feats[:4096], batch_size=4096)["gzs_logits"]
        for precision, rate in rates.items():
            err = ""
            if precision != "fp32":
                got = predict(model, feats[:4096], batch_size=4096, precision=precision)["gzs_logits"]
                err = f"; scores vs fp32: {float((got - ref).norm() / ref.norm()):.1e} rel"
            rows.append(Row(f"inference, GPU, batch 4096, {precision} ({name}), float16 features on the GPU",
                            f"{rate:,.0f} images/s", f"{rates['fp32']:,.0f} images/s: fp32 (this run)",
                            _ratio(1 / rates["fp32"], 1 / rate), f"goal >= 200,000 images/s{err}"))
    else:
        rows.append(Row("inference, GPU, batch 4096", NOT_MEASURED, "-", "-", "goal >= 200,000 images/s"))
    return rows


# -- reading feature files -------------------------------------------------------------------------
def _feature_file(path, n: int, dtype: str) -> None:
    from lesa.datasets.h5 import FeatureWriter

    rng = np.random.default_rng(0)
    with FeatureWriter(path, "nus_wide", "Train", {"labels_81": 81}, dtype=dtype) as writer:
        for a in range(0, n, 128):
            b = min(n, a + 128)
            feats = np.maximum(rng.standard_normal((b - a, 196, 512), dtype=np.float32), 0)
            writer.append([str(i) for i in range(a, b)], feats, {"labels_81": np.ones((b - a, 81), np.int8)})
        writer.finish()


def _windows_per_second(split, workers: int, windows) -> float:
    """Records/s of ``read_windows`` (windows for a preload: no page-locking) with ``workers``."""
    from lesa.datasets.stream import RangeReader

    reader = RangeReader(split, {"y": ("labels_81", None)}, read_workers=workers)
    start = time.perf_counter()
    for _ in reader.read_windows(lambda: iter(windows), len(windows[0][0]), batches=False):
        pass
    return sum(len(w[0]) for w in windows) / (time.perf_counter() - start)


def bench_reading(quick: bool) -> list[Row]:
    """Streamed reads of a feature file (in the page cache) in windows of ``chunk_mb`` = 64 MB, as
    training and evaluation read them: copy-free reads vs the former gather-then-copy, and reader
    processes vs the reading thread."""
    import tempfile

    from lesa.datasets import read_workers as rw
    from lesa.datasets.h5 import open_features
    from lesa.datasets.stream import RangeReader

    n = 512 if quick else 2048
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float16"):
            path = f"{tmp}/{dtype}.h5"
            _feature_file(path, n, dtype)
            split = open_features(path)
            reader = RangeReader(split, {"y": ("labels_81", None)})
            per = reader.chunk_records
            windows = [[np.arange(a, min(n, a + per))] for a in range(0, n, per)]

            def gather_then_copy():  # the former read path: rows gathered by h5py, then copied in
                for (w,) in windows:
                    out = np.empty((w.size, 196, 512), reader.dtype)
                    out[:] = split.read_features(w, dtype=None)

            def copy_free():
                for (w,) in windows:
                    reader.read(w)

            gather_then_copy()  # the file into the page cache
            old = n / median_seconds(gather_then_copy, 3)
            new = n / median_seconds(copy_free, 3)
            rows.append(Row(f"reading a {dtype} feature file in windows of 64 MB, one thread, file in the page "
                            f"cache ({n:,} records)", f"{new:,.0f} records/s",
                            f"{old:,.0f} records/s: rows gathered by h5py, then copied into the window "
                            "(the former path; this run)", _ratio(1 / old, 1 / new)))
            if rw.can_fork():  # (passes over the file: the processes' start-up counts, as in a run)
                passes = windows * (2 if quick else 4)
                thread = np.median([_windows_per_second(split, 0, passes) for _ in range(3)])
                for workers in sorted({1, 2, max(2, min(4, cores - 1))}):
                    rate = np.median([_windows_per_second(split, workers, passes) for _ in range(3)])
                    rows.append(Row(f"same, {workers} reader process{'es' if workers > 1 else ''} "
                                    f"(data.read_workers = {workers}; {cores} cores; {len(passes) // len(windows)} "
                                    "passes)", f"{rate:,.0f} records/s",
                                    f"{thread:,.0f} records/s: the reading thread (read_workers = 0; this run)",
                                    _ratio(1 / thread, 1 / rate),
                                    "--quick: the processes' start (0.1-0.3 s) dominates" if quick else ""))
            split.close()
    return rows


# -- the table --------------------------------------------------------------------------------------
SECTIONS = {"step": bench_training_step, "ranking": bench_ranking_loss, "evaluation": bench_evaluation,
            "inference": bench_inference, "reading": bench_reading, "schedule": bench_schedule}


def run(quick: bool = False, only: list[str] | None = None, progress=None) -> str:
    """Run the benchmarks and return the markdown table (with the machine line above it)."""
    rows: list[Row] = []
    names = only or list(SECTIONS)
    for name in names:
        if progress:
            progress(f"benchmark: {name} ...")
        try:
            new = SECTIONS[name](quick)
        except Exception as exc:  # one broken section must not lose the others' figures
            new = [Row(f"section {name}", f"failed: {type(exc).__name__}: {exc}"[:200], "", "-")]
        if progress:  # each row as soon as it is measured (a long run that is cut keeps them)
            for r in new:
                progress(f"| {r.figure} | {r.value} | {r.baseline} | {r.ratio} | {r.note} |")
        rows += new
    return format_table(rows, quick)


def format_table(rows: list[Row], quick: bool) -> str:
    lines = [f"Machine: {machine_line()}{' (--quick: smaller sizes)' if quick else ''}", "",
             "| figure | ours | baseline | ratio | note |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.figure} | {r.value} | {r.baseline} | {r.ratio} | {r.note} |")
    lines.append("")
    lines.append("Feature extraction throughput: see benchmarks/bench_extract.py.")
    return "\n".join(lines)
