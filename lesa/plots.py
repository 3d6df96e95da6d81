"""Figures of a run folder (``lesa plot RUN_DIR``), written into ``<run>/plots/*.png``:

- :func:`plot_training_curves` -- one panel per numeric column of ``log.csv`` (losses red,
  validation metrics blue, learning rate green) against the iteration column (``index``).
- :func:`plot_class_ap` -- per-class AP of an evaluation report (``F1_*_test.csv``, see
  ``lesa.evaluate``): named bars coloured unseen / seen, with the mean APs. Above ``max_classes``
  classes (NUS-WIDE's 1,006 generalised labels) the figure shows the AP of every class, ranked,
  and names the best and the worst ``top``.
- :func:`plot_run` -- both, for every such file of a run folder.

Class names: the reports of the 81 concepts and of Open Images have a ``classes`` column; the
generalised NUS-WIDE report (``F1_*_1k_test.csv``) has none (original: its rows are the unseen
labels, then the seen). Its names come from the run's checkpoint (``label_names``, written by
``lesa train`` and ``lesa import-tf --config``), else the unseen ones from the zero-shot report
beside it. Rendering uses matplotlib's ``Figure`` (the Agg canvas: no display, no pyplot state).
"""
from __future__ import annotations

import json
import math
import os
import re
import textwrap
from pathlib import Path

import numpy as np

from lesa.errors import CheckpointError, DataError

ITERATION_COLUMNS = ("index", "iteration", "iter", "step", "global_step")
LOG_NAME = "log.csv"
PLOTS_DIR = "plots"
CHECKPOINTS = ("model.pt", "model_ES.pt", "last.pt")  # each written by `lesa train` with label_names
# F1_<tag>[_<name>]_test.csv (lesa.evaluate.report_file) -> the labels its rows are
REPORT = re.compile(r"F1_(.+?)(?:_(81|1k|zs|gzs))?_test")
ROWS = {"81": "unseen", "zs": "unseen", "1k": "unseen+seen", "gzs": "unseen+seen", None: "seen"}
ZERO_SHOT_OF = {"1k": "81", "gzs": "zs"}  # a generalised report -> the zero-shot one beside it
COLOURS = {"unseen": "tab:orange", "seen": "tab:blue", "class": "tab:grey"}
DPI = 100


def save_figure(fig, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG atomically (never a half-written file under ``path``)."""
    from lesa.files import atomic_write

    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def read_columns(path: str | os.PathLike) -> dict[str, list[str]]:
    """A CSV as ``{column: [cell, ...]}`` (the unnamed index column of pandas' files dropped)."""
    from lesa.files import read_csv

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found")
    try:
        header, rows = read_csv(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 CSV file ({exc})") from exc
    if not header:
        raise DataError(f"{path} is empty; expected a header row and data rows")
    return {name.strip() or f"column{i}": [row[i] if i < len(row) else "" for row in rows]
            for i, name in enumerate(header)}


def _numbers(values: list[str]) -> np.ndarray | None:
    """The column as float64 (empty cells -> NaN), or None when it is not numeric."""
    try:
        return np.array([v.strip() or "nan" for v in values], dtype=float)
    except ValueError:
        return None


def _column(columns: dict, wanted: str) -> str | None:
    """The column named ``wanted``, ignoring case (the original wrote both 'ap' and 'aP')."""
    return next((name for name in columns if name.lower() == wanted), None)


# -- training curves ------------------------------------------------------------------------------
def _kind(name: str) -> str:
    lowered = name.lower()
    if lowered in ("lr", "learning_rate") or lowered.startswith("lr_"):
        return "learning rate"
    if lowered == "l" or lowered.startswith("l_") or "loss" in lowered:
        return "loss"
    return "metric"


KIND_COLOURS = {"loss": "tab:red", "metric": "tab:blue", "learning rate": "tab:green"}


def _short_number(value: float, _pos=None) -> str:
    """Tick label: 125000 -> '125k', 2000000 -> '2M'."""
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:g}{suffix}"
    return f"{value:g}"


def plot_training_curves(log_csv: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """One panel per numeric column of ``log_csv`` against its iteration column (else the row).

    A panel whose values are positive and span more than two decades has a log y axis (the
    attention losses start in the thousands); a metric's best value is marked. Writes
    ``<run>/plots/training_curves.png`` unless ``out_path`` is given.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    log_csv = Path(log_csv)
    columns = read_columns(log_csv)
    numeric = {name: arr for name, values in columns.items()
               if (arr := _numbers(values)) is not None and np.isfinite(arr).any()}
    iteration_column = next((c for c in ITERATION_COLUMNS if c in numeric), None)
    if iteration_column is not None:
        iterations, x_label = numeric.pop(iteration_column), iteration_column
    else:
        iterations, x_label = np.arange(len(next(iter(columns.values()))), dtype=float), "row"
    if not numeric:
        raise DataError(f"{log_csv}: no numeric column to plot besides the iteration column "
                        f"(columns: {', '.join(columns)})")

    names = sorted(numeric, key=lambda n: list(KIND_COLOURS).index(_kind(n)))  # stable: file order kept
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        values = numeric[name]
        ok = np.isfinite(values)
        colour = KIND_COLOURS[_kind(name)]
        ax.plot(iterations[ok], values[ok], color=colour, marker="." if ok.sum() < 60 else None, linewidth=1.4)
        finite = values[ok]
        if finite.size > 1 and finite.min() > 0 and finite.max() / finite.min() > 100:
            ax.set_yscale("log")
        best = ""
        if _kind(name) == "metric":
            i = int(np.argmax(np.where(ok, values, -np.inf)))
            ax.axvline(iterations[i], color=colour, alpha=0.25, linestyle="--")
            best = f" (best {values[i]:.4g} @ {iterations[i]:.0f})"
        ax.set_title(f"{name}{best}", fontsize=10)
        ax.set_xlabel(x_label, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(_short_number))
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"training log: {log_csv.parent.name or log_csv.name}", fontsize=12)
    return save_figure(fig, out_path or log_csv.parent / PLOTS_DIR / "training_curves.png")


# -- per-class AP ---------------------------------------------------------------------------------
def _checkpoint_names(run: Path, tag: str) -> dict | None:
    """``label_names`` of the first checkpoint that has them: the one ``summary_<tag>.json``
    names (``lesa evaluate``), then the run's own ``CHECKPOINTS``; None when none has."""
    from lesa.checkpoint import load_checkpoint

    paths = [run / name for name in CHECKPOINTS]
    try:
        paths.insert(0, Path(json.loads((run / f"summary_{tag}.json").read_text())["checkpoint"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no summary (the original's runs): the run's own checkpoints
    for path in paths:
        if path.suffix == ".pt" and path.is_file():
            try:
                names = load_checkpoint(path).get("label_names")
            except CheckpointError:
                continue  # a damaged checkpoint: the next one may do
            if names and names.get("seen") and names.get("unseen"):
                return names
    return None


def class_names(eval_csv: Path, columns: dict) -> tuple[list[str], list[str], str]:
    """Each row's class name and group ("unseen", "seen" or "class" when unknown), and a note
    saying what could not be found (empty when nothing is missing)."""
    n = len(next(iter(columns.values())))
    given = columns.get(_column(columns, "classes"))
    numbered = [f"#{i}" for i in range(n)]
    report = REPORT.fullmatch(eval_csv.stem)
    if report is None:  # not a lesa/original report: no seen/unseen to tell apart
        return given or numbered, ["class"] * n, "" if given else "no 'classes' column: rows are numbered"
    tag, name = report.groups()
    if ROWS[name] != "unseen+seen":
        return given or numbered, [ROWS[name]] * n, "" if given else "no 'classes' column: rows are numbered"
    # generalised: the unseen labels first, then the seen
    names, note = _checkpoint_names(eval_csv.parent, tag), ""
    if names and len(names["unseen"]) + len(names["seen"]) == n:
        n_unseen, found = len(names["unseen"]), names["unseen"] + names["seen"]
    else:
        zero_shot = eval_csv.with_name(f"F1_{tag}_{ZERO_SHOT_OF[name]}_test.csv")
        unseen = read_columns(zero_shot).get("classes", []) if zero_shot.is_file() else []
        lacking = f"no checkpoint with label names ({', '.join(CHECKPOINTS)} or the one summary_{tag}.json names)"
        if not 0 < len(unseen) < n:
            return given or numbered, ["class"] * n, \
                f"which rows are unseen is unknown: {lacking} and no {zero_shot.name} beside it"
        n_unseen = len(unseen)
        found = unseen + [f"seen #{j}" for j in range(n - n_unseen)]
        note = (f"seen labels unnamed: {lacking}; unseen names from {zero_shot.name}. For the original's "
                "runs, `lesa import-tf RUN/model.ckpt --config nus_wide_zero_shot --out RUN/model.pt` "
                "writes a checkpoint with the names")
    return given or found, ["unseen"] * n_unseen + ["seen"] * (n - n_unseen), "" if given else note


def _named_bars(ax, names, values, groups, title: str) -> None:
    """Horizontal bars, first on top, each with its name and value."""
    y = np.arange(len(values))
    bars = ax.barh(y, values, color=[COLOURS[g] for g in groups])
    ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=6.5)
    ax.set_yticks(y, names, fontsize=7.5)
    ax.set_ylim(len(values) - 0.4, -0.6)
    ax.set_xlim(0, min(1.0, 1.15 * max(float(np.max(values)), 0.05)))
    ax.set_xlabel("average precision", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)


def plot_class_ap(eval_csv: str | os.PathLike, out_path: str | os.PathLike | None = None, *,
                  max_classes: int = 100, top: int = 25, log=None) -> Path:
    """Per-class AP of an evaluation report, coloured unseen / seen, with the mean APs.

    Up to ``max_classes`` classes: one named bar each, best first. More: the AP of every class,
    ranked, over the names and values of the ``top`` best and the ``top`` worst. Classes whose AP
    is NaN (no positive test image) are left out and counted. ``log``: called with a note when
    class names are missing. Writes ``<run>/plots/<report>_ap.png`` unless ``out_path`` is given.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    eval_csv = Path(eval_csv)
    columns = read_columns(eval_csv)
    ap_name = _column(columns, "ap")
    if ap_name is None:
        raise DataError(f"{eval_csv}: no 'ap' column (columns: {', '.join(columns)}); expected an "
                        "evaluation report with per-class AP (F1_*_test.csv of `lesa train` / `lesa evaluate`)")
    ap = _numbers(columns[ap_name])
    if ap is None:
        raise DataError(f"{eval_csv}: column '{ap_name}' is not numeric")
    names, groups, note = class_names(eval_csv, columns)
    if note and log:
        log(f"{eval_csv.name}: {note}")
    defined = np.isfinite(ap)
    if not defined.any():
        raise DataError(f"{eval_csv}: every AP is empty or NaN; nothing to plot")
    order = np.flatnonzero(defined)[np.argsort(-ap[defined], kind="stable")]  # best first
    names, values, groups = [names[i] for i in order], ap[order], [groups[i] for i in order]
    mean_ap = float(values.mean())

    present, legend = [g for g in COLOURS if g in groups], []
    for g in present:
        mine = np.array(groups) == g
        mean = f": mean AP {values[mine].mean():.4f}" if len(present) > 1 else ""
        legend.append(Patch(color=COLOURS[g], label=f"{g} ({mine.sum()}){mean}"))
    mean_line = dict(color="black", linestyle="--", linewidth=1, label=f"mean AP {mean_ap:.4f}")
    n_undefined = int((~defined).sum())
    title = f"{eval_csv.name}: per-class AP of {len(values)} classes"
    if n_undefined:
        title += f" ({n_undefined} without positive test images left out)"

    if len(values) <= max_classes:
        fig = Figure(figsize=(8, max(3.0, 0.2 * len(values) + 1.6)), layout="constrained")
        ax = fig.subplots()
        _named_bars(ax, names, values, groups, "")
        ax.legend(handles=[*legend, ax.axvline(mean_ap, **mean_line)], loc="lower right", fontsize=8)
    else:
        top = max(1, min(top, len(values) // 2))
        fig = Figure(figsize=(13, 4.2 + 0.2 * top), layout="constrained")
        grid = fig.add_gridspec(2, 2, height_ratios=[3.0, 0.2 * top + 0.6])
        ranked = fig.add_subplot(grid[0, :])
        rank = np.arange(1, len(values) + 1)
        ranked.vlines(rank, 0, values, colors=[COLOURS[g] for g in groups], linewidth=0.9)  # one bar each
        for g in ("unseen",) if "seen" in groups else ():  # the few unseen among many seen: dots too
            mine = np.array(groups) == g
            ranked.scatter(rank[mine], values[mine], s=7, color=COLOURS[g], zorder=3)
        ranked.set_xlim(0.5, len(values) + 0.5)
        ranked.set_xlabel("classes ranked by AP", fontsize=8)
        ranked.set_ylabel("average precision", fontsize=8)
        ranked.set_title("every class", fontsize=10)
        ranked.grid(True, axis="y", alpha=0.3)
        ranked.legend(handles=[*legend, ranked.axhline(mean_ap, **mean_line)], loc="upper right", fontsize=9)
        _named_bars(fig.add_subplot(grid[1, 0]), names[:top], values[:top], groups[:top], f"best {top}")
        _named_bars(fig.add_subplot(grid[1, 1]), names[-top:], values[-top:], groups[-top:],
                    f"worst {top} (ranks {len(values) - top + 1}-{len(values)})")
    fig.suptitle(title + ("\n" + textwrap.fill(f"note: {note}", 160) if note else ""), fontsize=10)
    return save_figure(fig, out_path or eval_csv.parent / PLOTS_DIR / f"{eval_csv.stem}_ap.png")


def plot_run(run_dir: str | os.PathLike, log=None) -> list[Path]:
    """Every figure of a run folder, into ``<run>/plots/``: the training curves of ``log.csv`` and
    the per-class AP of each evaluation report ``F1_*_test.csv``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"run folder {run} not found")
    written = [plot_training_curves(run / LOG_NAME)] if (run / LOG_NAME).is_file() else []
    written += [plot_class_ap(path, log=log) for path in sorted(run.glob("F1_*_test.csv"))]
    if not written:
        raise DataError(f"{run}: no {LOG_NAME} and no evaluation report F1_*_test.csv; pass a "
                        "results/<run> folder written by `lesa train` or `lesa evaluate --out`")
    return written
