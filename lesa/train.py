"""One training loop for every experiment (the experiments differ only by configuration).

Schedule (original, e.g. ``zeroshot_experiments/NUS_WIDE_zs_rank_Visual_Word_Attention.py``):

    for i in range(n_iters):
        one TF-RMSProp step on the next batch (batch-norm in training mode, moving stats updated)
        if i % eval_interval == 0 or i == n_iters - 1:          eval_interval = max(n_iters//50, 500)
            validate; lr = AdaptiveLR.step(monitor); append a row to log.csv
            if monitor >= best so far: save model_ES.pt
    save model.pt; test reports of model.pt (F1_f_*) and of model_ES.pt (F1_ES_*)

Output folder: ``log.csv`` (the original's columns), ``description.txt``, ``config.toml`` (read back
by ``--resume``), ``model_ES.pt``, ``model.pt``, ``last.pt`` (the resume point: at each evaluation, every
``train.checkpoint_every`` iterations / ``train.checkpoint_minutes``, on Ctrl-C), the test reports.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lesa import distributed, metrics
from lesa.checkpoint import load_checkpoint, load_model_state, save_checkpoint, set_rng_state
from lesa.datasets.stream import BatchPlan, RangeReader, TrainStream, open_split
from lesa.device import pick_device, set_tf32
from lesa.errors import ConfigError, ShapeError, TrainingError
from lesa.evaluate import evaluate_checkpoints, gzs_labels, predict, validation_metrics
from lesa.experiment import Config, check_config, dumps_config
from lesa.files import atomic_write_text, read_csv, remove_temporaries, write_csv
from lesa.model import LESA
from lesa.optim import AdaptiveLR, TFRMSprop
from lesa.step import NonFiniteLoss, TrainStep, max_positives_of
from lesa.tasks import TaskData, load_task

LOSS_COLUMNS = [("l", "total"), ("l_rank", "rank"), ("l_att_span", "att_span"),
                ("l_att_global", "att_global"), ("l_att_dist", "att_dist")]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what was saved and how to continue."""


def log_columns(task: TaskData) -> list[str]:
    """The original's log.csv columns (NUS-WIDE zero-shot adds the unseen F1 ``mF1_u``)."""
    cols = ["index"] + [c for c, _ in LOSS_COLUMNS] + ["mF1"]
    if task.task == "nus_wide_zero_shot":
        cols.append("mF1_u")
    return cols + ["mAP", "lr"]


def f32(x) -> float:
    """TF1 kept these values in float32; the log shows them as the float32 value in float64."""
    return float(np.float32(x))


def description_text(cfg: Config, task: TaskData) -> str:
    t, d, m = cfg.train, cfg.data, cfg.model
    lines = [
        f"experiment {cfg.experiment.name} ({cfg.experiment.task})",
        cfg.experiment.description.strip(),
        f"lr {t.lr}",
        f"n_iters {t.n_iters}",
        f"batch_size {t.batch_size}",
        "shuffle" if d.shuffle else "no shuffle",
        "adaptive learning rate",
        f"signal_str {t.signal_strength}",
        f"patient {t.patience}",
        f"monitor {t.monitor} (validation F1@{t.val_k} or mAP)",
        f"eval_interval {cfg.eval_interval}",
        f"train_img: {', '.join(d.train)}",
        f"val_img: {', '.join(d.validation) if d.validation else f'first {d.n_validation} records of the train split'}",
        f"test_img: {', '.join(d.test)}",
        f"label vectors: {d.label_vectors}",
        f"seen labels {task.n_seen}, unseen labels {len(task.unseen_names) if task.has_unseen else 0}",
        "model: " + ", ".join(f"{k}={v}" for k, v in m.to_dict().items()),
    ]
    return "\n".join(x for x in lines if x) + "\n"


@dataclass
class TrainState:
    """Everything of the loop that a resume needs besides model/optimiser/schedule."""

    iteration: int = 0  # next iteration to run
    position: dict = field(default_factory=lambda: {"epoch": 0, "batch": 0})
    log_rows: list = field(default_factory=list)
    best: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(iteration=int(d["iteration"]), position={k: int(v) for k, v in d["position"].items()},
                   log_rows=[list(r) for r in d["log_rows"]], best=d.get("best"))


@dataclass
class Training:
    """The objects of one run (see ``build_training``)."""

    cfg: Config
    task: TaskData
    device: torch.device
    model: LESA
    optimizer: TFRMSprop
    schedule: AdaptiveLR
    step: TrainStep
    train_split: object
    val_split: object
    train_reader: RangeReader
    val_reader: RangeReader
    plan: BatchPlan
    out_dir: Path
    state: TrainState = field(default_factory=TrainState)
    dist: object = None  # lesa.distributed.DistContext (a single process: world size 1)

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    def label_names(self) -> dict:
        return {"seen": self.task.seen_names, "unseen": self.task.unseen_names}

    def close(self) -> None:
        self.train_split.close()
        if self.val_split is not self.train_split:
            self.val_split.close()


def build_training(cfg: Config, resume: bool = False, progress: bool = True, dist=None) -> Training:
    """Check the configuration, open the data, build model/optimiser/schedule/step (restored on resume)."""
    check_config(cfg)
    t, d = cfg.train, cfg.data
    out_dir = cfg.out_dir
    last = out_dir / "last.pt"
    if resume and not last.exists():
        raise ConfigError(f"--resume: {last} not found; nothing to resume in {out_dir} (a run killed "
                          "before its first checkpoint starts again without --resume)")
    # A folder with log.csv but no last.pt was killed before its first checkpoint: nothing to
    # resume, so a fresh start may overwrite it (refusing would leave the user stuck).
    if not resume and (last.exists() or (out_dir / "model.pt").exists()):
        raise ConfigError(f"{out_dir} already holds a run (last.pt/model.pt); continue it with "
                          f"`lesa train {out_dir} --resume`, or choose another --out")
    if resume:
        remove_temporaries(out_dir)  # of writes interrupted by a crash (never under a final name)
    device = pick_device(t.device)  # (under torchrun, lesa.distributed.setup chose this rank's GPU)
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)
    if t.deterministic:
        # cuBLAS is deterministic only with a fixed workspace; read when its first handle is made
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    task = load_task(cfg)

    train_split = open_split(d.train, "train")
    if d.validation:
        val_split = open_split(d.validation, "validation")
        val_range, train_range = (0, len(val_split)), (0, len(train_split))
    else:
        val_split = train_split  # original (NUS-WIDE): take(5000) for validation, skip(5000) to train
        n_val = min(d.n_validation, len(train_split))
        if n_val == 0:
            raise ConfigError(f"{cfg.source}: data.n_validation is 0 and no data.validation file is given; "
                              "training needs a validation split")
        val_range, train_range = (0, n_val), (n_val, len(train_split))
    if train_range[1] <= train_range[0]:
        raise ConfigError(f"{train_split.paths[0]}: {len(train_split)} records leave none for training after "
                          f"the {d.n_validation} validation records; lower data.n_validation")
    check_label_widths(train_split, task.train_labels, task, "train")
    check_label_widths(val_split, task.val_labels, task, "validation")
    check_test_split(cfg, task)  # read only after training: check it now (metadata only)
    train_reader = RangeReader(train_split, task.train_labels, *train_range, preload=d.preload, device=device,
                               chunk_mb=d.chunk_mb, workers=d.workers, progress=progress, name="train")
    val_reader = RangeReader(val_split, task.val_labels, *val_range, device=device,
                             preload=d.preload if dist is None or dist.is_main else "none",  # only rank 0 validates
                             chunk_mb=d.chunk_mb, workers=d.workers, progress=progress, name="validation")
    plan = BatchPlan(*train_range, t.batch_size, shuffle=d.shuffle, seed=t.seed,
                     block=max(1, train_reader.chunk_records // 4), buffer=d.shuffle_buffer)

    torch.manual_seed(t.seed)
    model = LESA(task.seen_vecs, task.unseen_vecs, cfg.model).to(device)
    set_tf32(t.precision == "tf32")  # train.precision: fp32 (the default, exact) or tf32 (GPU matrix units)
    optimizer = TFRMSprop(model.parameters(), lr=t.lr, decay=t.rmsprop_decay, momentum=t.rmsprop_momentum,
                          eps=t.rmsprop_eps)
    schedule = AdaptiveLR(optimizer, signal_strength=t.signal_strength, patience=t.patience,
                          decay_rate=t.decay_rate, limit_scale=t.limit_scale)
    step = make_step(cfg, model, optimizer, train_reader, dist)
    run = Training(cfg, task, device, model, optimizer, schedule, step, train_split, val_split, train_reader,
                   val_reader, plan, out_dir, dist=dist)
    if resume:
        restore_resume_point(run, last)
    return run


def make_step(cfg: Config, model: LESA, optimizer: TFRMSprop, reader: RangeReader, dist=None) -> TrainStep:
    """``train.step`` resolved ("auto": a CUDA graph for one process on a GPU, else eager). Compiled and
    captured steps pad the ranking loss to the most positives of any training image (static shapes)."""
    mode = cfg.train.step
    single = (dist is None or not dist.active) and not cfg.data.skip_no_positive
    if mode == "auto":
        mode = "cuda_graph" if next(model.parameters()).is_cuda and single else "eager"
    if mode == "eager":
        if dist is not None and dist.active:
            return TrainStep(model, optimizer, forward=distributed.wrap_model(model, dist), world_size=dist.world_size)
        return TrainStep(model, optimizer)
    if not single:
        raise ConfigError(f"{cfg.source}: train.step = {mode!r} needs one process and data.skip_no_positive "
                          "= false; use train.step = \"eager\"")
    array, cols = reader.label_spec["seen"]
    most = 1
    for a in range(reader.start, reader.stop, 65536):  # label matrices can be large: in blocks
        block = reader.split.read_labels(array, np.arange(a, min(reader.stop, a + 65536)))
        most = max(most, max_positives_of(block if cols is None else block[:, cols]))
    return TrainStep(model, optimizer, mode=mode, max_positives=most)


def check_label_widths(split, label_spec: dict, task: TaskData, what: str) -> None:
    """Each label array read must have one column per label of the task (fail fast, before work)."""
    expected = {"seen": task.n_seen, "unseen": len(task.unseen_names)}
    for key, (array, cols) in label_spec.items():
        if array not in split.label_dims:
            continue  # RangeReader names the missing array
        width = split.label_dims[array] if cols is None else len(cols)
        if key in expected and width != expected[key]:
            raise ShapeError(f"{split.paths[0]}: the {what} split's label array {array!r} has {width} columns "
                             f"but the task has {expected[key]} {key} labels; the feature file and the label "
                             "lists/vectors of the configuration do not belong together")


def check_test_split(cfg: Config, task: TaskData) -> None:
    """Open the test split and check its label arrays without reading any features."""
    with open_split(cfg.data.test, "test") as split:
        check_label_widths(split, task.test_labels, task, "test")
        RangeReader(split, task.test_labels, preload="none", progress=False, name="test")


def restore_resume_point(run: Training, path: Path) -> None:
    payload = load_checkpoint(path)
    for key in ("optimizer_state", "schedule_state", "train_state"):
        if key not in payload:
            raise TrainingError(f"{path}: no {key}; it is not a resume checkpoint (use last.pt)")
    saved_model = (payload.get("config") or {}).get("model")
    if saved_model and saved_model != run.cfg.to_dict()["model"]:
        raise TrainingError(f"{path}: the [model] settings differ from the checkpoint's; resume "
                            f"with the run's own configuration: lesa train {run.out_dir} --resume")
    load_model_state(run.model, payload["model_state"], str(path))
    try:
        run.optimizer.load_state_dict(payload["optimizer_state"])
    except (ValueError, KeyError) as exc:
        raise TrainingError(f"{path}: the optimiser state does not fit this model ({exc})") from exc
    run.schedule.load_state_dict(payload["schedule_state"])
    run.optimizer.set_lr(run.optimizer.lr)  # (a captured step reads the rate from a device tensor)
    run.state = TrainState.from_dict(payload["train_state"])
    set_rng_state(payload.get("rng_state"))


def save_resume_point(run: Training, name: str = "last.pt") -> Path:
    return save_checkpoint(run.out_dir / name, run.model, config=run.cfg, optimizer=run.optimizer,
                           schedule=run.schedule, train_state=run.state.to_dict(), label_names=run.label_names())


def train_step(run: Training, batch) -> dict | None:
    """One optimisation step; returns the loss values (0-dim tensors on the model's device: no
    host sync) or None if the batch was skipped."""
    features, labels = batch.features, batch.labels["seen"]
    if run.cfg.data.skip_no_positive:
        # original (Open Images): drop images without a positive label; skip an all-empty batch
        # (of the global batch: every rank decides the same)
        keep = (labels > 0).any(dim=1)
        n_keep = int(keep.sum())  # the one host sync this needs (the batch size depends on it)
        if not distributed.any_true(run.dist, n_keep > 0):
            return None
        if n_keep < keep.numel():
            features, labels = features[keep], labels[keep]
    try:
        losses = run.step(features, labels)
    except NonFiniteLoss as exc:
        raise TrainingError(
            f"{exc} at iteration {run.state.iteration} (records {batch.rows[:1].tolist()}.."
            f"{batch.rows[-1:].tolist()}); {_last_good_state(run)}. Check the features for NaN/inf, or "
            "lower train.lr") from None
    return {col: losses[key] for col, key in LOSS_COLUMNS}


class LossWatch:
    """The first iteration with a NaN/inf loss, kept on the device (no host sync per step); asked
    before every save and evaluation, so checkpoints only hold states reached by finite steps."""

    NONE = 2**62  # "no bad iteration yet"

    def __init__(self):
        self.first_bad = None  # 0-dim int64 tensor: the first bad iteration, or NONE

    def record(self, total: torch.Tensor, iteration: int) -> None:
        # three small kernels, no sync: min(first bad so far, this iteration if it is bad)
        this = torch.where(torch.isfinite(total), self.NONE, iteration)
        self.first_bad = this if self.first_bad is None else torch.minimum(self.first_bad, this)

    def raise_if_bad(self, run: Training) -> None:
        bad = self.NONE if self.first_bad is None else int(self.first_bad)  # the host sync, now and then
        if bad != self.NONE:
            raise TrainingError(
                f"non-finite loss at iteration {bad} (found at iteration {run.state.iteration - 1}; on a GPU "
                f"the loss is checked before each save and evaluation); {_last_good_state(run)}. Check the "
                "features for NaN/inf, or lower train.lr")


def _last_good_state(run: Training) -> str:
    path = run.out_dir / "last.pt"
    try:
        iteration = load_checkpoint(path)["train_state"]["iteration"]
    except Exception:
        return "no resume point was saved yet"
    return f"the last good state is {path} (iteration {iteration})"


def _zs_quarter_test(run: Training, i: int, log) -> None:
    """original (Open Images): zero-shot/generalised test at each quarter; printed and logged in
    zs_test_log.csv."""
    ev = run.cfg.evaluate
    with open_split(run.cfg.data.test, "test") as split:
        reader = RangeReader(split, run.task.test_labels, device=run.device, chunk_mb=run.cfg.data.chunk_mb,
                             workers=run.cfg.data.workers, progress=False, name="test")
        scores, labels = predict(run.model, reader, run.cfg.data.eval_batch_size, heads=("zs_logits", "gzs_logits"))
    zs = metrics.topk_f1_many(scores["zs_logits"], labels["unseen"], ev.k)
    gzs = metrics.topk_f1_many(scores["gzs_logits"], gzs_labels(labels), ev.k_gzs)
    row = [i, metrics.mean_average_precision(scores["zs_logits"], labels["unseen"]),
           metrics.mean_average_precision(scores["gzs_logits"], gzs_labels(labels))]
    row += [zs[int(k)][0] for k in ev.k] + [gzs[int(k)][0] for k in ev.k_gzs]
    cols = ["index", "mAP_zs", "mAP_gzs"] + [f"F1_{k}" for k in ev.k] + [f"g_F1_{k}" for k in ev.k_gzs]
    path = run.out_dir / "zs_test_log.csv"
    rows = read_csv(path)[1] if path.exists() else []
    write_csv(path, cols, rows + [row])
    log(f"zero-shot test at iteration {i}: " + ", ".join(f"{c} {v:.4f}" for c, v in zip(cols[1:], row[1:])))


class _CtrlC:
    """The first Ctrl-C asks the loop to stop after the current iteration (it saves a resume point);
    a second one stops at once. Only in the main thread of a single-process run."""

    def __init__(self, enabled: bool):
        self.requested = False
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nlesa: stopping after this iteration to save a resume point (Ctrl-C again to stop at once)",
              flush=True)

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


def train(cfg: Config, resume: bool = False, progress: bool = True, log=print, final_eval: bool = True,
          stop_after: int | None = None) -> dict:
    """Run (or resume) a training; returns ``{"out_dir", "iterations", "best", "summaries"}``.

    ``stop_after``: stop (as if killed, nothing saved) once this many iterations are done — for tests.
    """
    # under torchrun: join the job; rank r trains on its slice of each global batch
    with contextlib.closing(distributed.setup(cfg.train.device, cfg.train.batch_size)) as ctx:
        if not ctx.is_main:
            progress, log = False, (lambda *_: None)
        run = build_training(cfg, resume=resume, progress=progress, dist=ctx if ctx.active else None)
        with contextlib.closing(run):
            return _train_loop(run, progress, log, final_eval, stop_after)


def _train_loop(run: Training, progress: bool, log, final_eval: bool, stop_after: int | None) -> dict:
    cfg, t, state = run.cfg, run.cfg.train, run.state
    out = run.out_dir
    if run.is_main:  # rank 0 writes every output
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "description.txt", description_text(cfg, run.task))
        atomic_write_text(out / "config.toml", dumps_config(cfg))
        log(f"training {cfg.experiment.name}: {t.n_iters} iterations on {run.device}; outputs in {out}")
    columns = log_columns(run.task)
    monitor_col = columns.index(t.monitor)
    quarter = t.n_iters // 4
    stream = TrainStream(run.train_reader, run.plan, position=state.position, shard=(0, 1) if run.dist is None else run.dist.shard)
    bar = tqdm(total=t.n_iters, initial=state.iteration, desc=f"train {cfg.experiment.name}", unit="it",
               disable=not progress, dynamic_ncols=True)
    watch = LossWatch()
    tic = last_save = time.perf_counter()
    ctrl_c = _CtrlC(enabled=run.dist is None)
    try:
        with ctrl_c:
            while state.iteration < t.n_iters:
                if stop_after is not None and state.iteration >= stop_after:
                    return {"out_dir": out, "iterations": state.iteration, "stopped": True}
                if ctrl_c.requested:
                    watch.raise_if_bad(run)
                    save_resume_point(run)
                    raise Interrupted(f"stopped at iteration {state.iteration} of {t.n_iters}; the resume point "
                                      f"{out / 'last.pt'} holds it: continue with `lesa train {out} --resume`")
                i = state.iteration
                losses = train_step(run, next(stream))
                state.iteration, state.position = i + 1, stream.position
                bar.update(1)
                if losses is None:  # original: `continue` — no evaluation on a skipped batch
                    continue
                watch.record(losses["l"], i)
                quarter_test = t.zs_test_quarters and quarter > 0 and (i + 1) % quarter == 0
                evaluation = i % cfg.eval_interval == 0 or i == t.n_iters - 1
                checkpoint = (t.checkpoint_every and (i + 1) % t.checkpoint_every == 0) or (
                    t.checkpoint_minutes and run.is_main and time.perf_counter() - last_save > 60 * t.checkpoint_minutes)
                if quarter_test or evaluation or checkpoint:
                    watch.raise_if_bad(run)
                if quarter_test and run.is_main:
                    _zs_quarter_test(run, i, log)
                if evaluation and run.is_main:
                    scores, labels = predict(run.model, run.val_reader, cfg.data.eval_batch_size,
                                             batchnorm=t.val_batchnorm)
                    val = validation_metrics(run.task, scores, labels, t.val_k)
                    lr = run.schedule.step(val[t.monitor])
                    row = [i] + [f32(float(losses[c])) for c, _ in LOSS_COLUMNS] + \
                        [float(val[c]) for c in columns[6:-1]] + [f32(lr)]
                    state.log_rows.append(row)
                    write_csv(out / "log.csv", columns, state.log_rows)
                    metric = row[monitor_col]
                    # original: save when the metric >= the column's max (which includes this row)
                    if not math.isnan(metric) and (state.best is None or metric >= state.best):
                        state.best = metric
                        save_checkpoint(out / "model_ES.pt", run.model, config=cfg, label_names=run.label_names())
                    save_resume_point(run)
                    last_save = time.perf_counter()
                    msg = " ".join(f"{c} {v:.4g}" if isinstance(v, float) else f"{c} {v}" for c, v in zip(columns, row))
                    elapsed, tic = time.perf_counter() - tic, time.perf_counter()
                    bar.write(f"{msg} ({elapsed:.1f}s)") if progress else log(msg)
                elif checkpoint and run.is_main:
                    save_resume_point(run)
                    last_save = time.perf_counter()
                if evaluation:  # rank 0's rate to every rank (the others wait here for its validation)
                    distributed.share_learning_rate(run.dist, run.optimizer)
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        raise Interrupted(f"stopped during iteration {state.iteration} of {t.n_iters}; "
                          f"{_last_good_state(run)}: continue with `lesa train {out} --resume` (the "
                          "iterations after it are done again)") from None
    finally:
        bar.close()
        stream.close()
    result = {"out_dir": out, "iterations": state.iteration, "best": state.best, "summaries": {}}
    if run.is_main:  # rank 0 saves and runs the test evaluation
        save_resume_point(run, "model.pt")
        save_resume_point(run)
        if final_eval:  # test reports of the final model (F1_f_*) and the early-stopping one (F1_ES_*)
            pairs = [(tag, str(out / name)) for tag, name in (("f", "model.pt"), ("ES", "model_ES.pt"))
                     if (out / name).exists()]
            summaries = evaluate_checkpoints(cfg, pairs, out, device=str(run.device), progress=progress, log=log,
                                             overwrite=True)
            result["summaries"] = {s["tag"]: s for s in summaries}
    distributed.barrier(run.dist)
    return result
