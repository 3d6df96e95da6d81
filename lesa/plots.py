"""Figures of a run: training curves from ``log.csv`` and per-class AP bars from evaluation CSVs.

Everything renders with matplotlib's Agg canvas (no display, no pyplot global state), into
``<run>/plots/*.png``:

- :func:`plot_training_curves` -- one panel per numeric column of ``log.csv`` (losses, validation
  metrics, learning rate) against the iteration column (``index`` in the original's logs).
- :func:`plot_class_ap` -- sorted per-class AP bars from an evaluation CSV with ``classes`` and
  ``ap`` columns (the original's ``F1_*_test.csv``), with the mean AP marked.
- :func:`plot_run` -- both, for every such file found in a run folder.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from lesa.errors import DataError

ITERATION_COLUMNS = ("index", "iteration", "iter", "step", "global_step")
LOG_NAME = "log.csv"
PLOTS_DIR = "plots"
DPI = 100


def read_csv_columns(path: str | os.PathLike) -> dict[str, list[str]]:
    """A CSV as ``{column: [cell, ...]}``; the unnamed first column pandas writes is dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DataError(f"{path} is empty; expected a header row and data rows")
    header = [name.strip() for name in rows[0]]
    columns: dict[str, list[str]] = {}
    for i, name in enumerate(header):
        if name in ("", "Unnamed: 0") and i == 0:  # pandas' index column
            continue
        columns[name or f"column{i}"] = [row[i] if i < len(row) else "" for row in rows[1:]]
    return columns


def _as_float(values: list[str]) -> np.ndarray | None:
    """The column as float64 (empty cells -> NaN), or None when it is not numeric."""
    out = np.empty(len(values))
    for i, value in enumerate(values):
        value = value.strip()
        if value == "":
            out[i] = np.nan
            continue
        try:
            out[i] = float(value)
        except ValueError:
            return None
    return out


def _kind(name: str) -> str:
    lowered = name.lower()
    if lowered in ("lr", "learning_rate") or lowered.startswith("lr_"):
        return "learning rate"
    if lowered == "l" or lowered.startswith("l_") or "loss" in lowered:
        return "loss"
    return "metric"


_KIND_COLOURS = {"loss": "tab:red", "metric": "tab:blue", "learning rate": "tab:green"}


def _use_log_scale(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return finite.size > 1 and bool(np.all(finite > 0)) and finite.max() / finite.min() > 100


def _short_number(value: float, _pos=None) -> str:
    """Tick label: 125000 -> '125k', 2000000 -> '2M'."""
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:g}{suffix}"
    return f"{value:g}"


def _find_column(columns, wanted: str) -> str | None:
    """The column named ``wanted``, ignoring case (the original wrote both 'ap' and 'aP')."""
    return next((name for name in columns if name.lower() == wanted.lower()), None)


def _run_dir_of(path: Path) -> Path:
    return path.parent


def plot_training_curves(log_csv: str | os.PathLike, out_path: str | os.PathLike | None = None,
                         *, iteration_column: str | None = None, ncols: int = 3) -> Path:
    """One panel per numeric column of ``log_csv`` against its iteration column.

    Losses are red, validation metrics blue, the learning rate green; a panel whose values are
    positive and span more than two decades uses a log y axis (the attention losses start in
    the thousands). Writes ``<run>/plots/training_curves.png`` unless ``out_path`` is given.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    log_csv = Path(log_csv)
    columns = read_csv_columns(log_csv)
    numeric = {name: arr for name, values in columns.items()
               if (arr := _as_float(values)) is not None and np.isfinite(arr).any()}
    if iteration_column is None:
        iteration_column = next((c for c in ITERATION_COLUMNS if c in numeric), None)
    elif iteration_column not in numeric:
        raise DataError(f"{log_csv}: no numeric column '{iteration_column}' "
                        f"(columns: {', '.join(columns)})")
    if iteration_column is not None:
        iterations = numeric.pop(iteration_column)
        x_label = iteration_column
    else:
        iterations = np.arange(len(next(iter(columns.values()), [])), dtype=float)
        x_label = "row"
    if not numeric:
        raise DataError(f"{log_csv}: no numeric column to plot besides the iteration column "
                        f"(columns: {', '.join(columns)})")

    names = sorted(numeric, key=lambda n: (list(_KIND_COLOURS).index(_kind(n)),
                                           list(numeric).index(n)))
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.9 * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = numeric[name]
        ok = np.isfinite(values)
        colour = _KIND_COLOURS[_kind(name)]
        ax.plot(iterations[ok], values[ok], color=colour, marker="." if ok.sum() < 60 else None,
                linewidth=1.4)
        if _use_log_scale(values):
            ax.set_yscale("log")
        finite = values[ok]
        best = ""
        if _kind(name) == "metric" and finite.size:
            i = int(np.nanargmax(np.where(ok, values, -np.inf)))
            ax.axvline(iterations[i], color=colour, alpha=0.25, linestyle="--")
            best = f" (best {values[i]:.4g} @ {iterations[i]:.0f})"
        ax.set_title(f"{name}{best}", fontsize=10)
        ax.set_xlabel(x_label, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(_short_number))
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"training log: {log_csv.parent.name or log_csv.name}", fontsize=12)
    out = Path(out_path) if out_path else _run_dir_of(log_csv) / PLOTS_DIR / "training_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_class_ap(eval_csv: str | os.PathLike, out_path: str | os.PathLike | None = None, *,
                  max_classes: int = 100, class_column: str = "classes",
                  ap_column: str = "ap") -> Path:
    """Horizontal bars of per-class AP, best first, with the mean AP as a dashed line.

    Columns are matched ignoring case; without a ``classes`` column rows are labelled ``#i``.

    With more than ``max_classes`` classes (NUS-WIDE's 1000 tags) the best and worst
    ``max_classes // 2`` are drawn, separated by a gap; the title still gives the mean over all.
    Classes whose AP is NaN (no positive example) are left out of the mean and counted in the
    title. Writes ``<run>/plots/<csv name>_ap.png`` unless ``out_path`` is given.
    """
    from matplotlib.figure import Figure

    eval_csv = Path(eval_csv)
    columns = read_csv_columns(eval_csv)
    ap_name = _find_column(columns, ap_column)
    if ap_name is None:
        raise DataError(f"{eval_csv}: no '{ap_column}' column (columns: {', '.join(columns)}); "
                        "expected an evaluation CSV with per-class AP")
    ap = _as_float(columns[ap_name])
    if ap is None:
        raise DataError(f"{eval_csv}: column '{ap_name}' is not numeric")
    class_name = _find_column(columns, class_column)
    # original: the 1k-tag CSV (F1_f_1k_test.csv) has no class names; rows are tag indices.
    classes = np.asarray(columns[class_name] if class_name else
                         [f"#{i}" for i in range(len(ap))], dtype=object)
    defined = np.isfinite(ap)
    if not defined.any():
        raise DataError(f"{eval_csv}: every AP is empty or NaN; nothing to plot")
    order = np.argsort(-ap[defined], kind="stable")
    names, values = classes[defined][order], ap[defined][order]
    mean_ap = float(values.mean())
    gap = None
    if len(values) > max_classes:
        half = max(1, max_classes // 2)
        names = np.concatenate([names[:half], ["..."], names[-half:]])
        values = np.concatenate([values[:half], [np.nan], values[-half:]])
        gap = half

    height = max(3.0, 0.22 * len(values) + 1.4)
    fig = Figure(figsize=(7.5, height), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(values))
    colours = ["tab:blue" if v >= mean_ap else "tab:orange" for v in np.nan_to_num(values)]
    ax.barh(y, np.nan_to_num(values), color=colours)
    ax.axvline(mean_ap, color="black", linestyle="--", linewidth=1,
               label=f"mean AP {mean_ap:.4f}")
    ax.set_yticks(y, [str(n) for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, float(np.nanmax(values))))
    ax.set_xlabel("average precision")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if gap is not None:
        ax.axhline(gap, color="grey", linewidth=0.8)
    undefined = int((~defined).sum())
    note = f", {undefined} without positives" if undefined else ""
    shown = f"best and worst {gap} of " if gap is not None else ""
    ax.set_title(f"{eval_csv.stem}: per-class AP ({shown}{int(defined.sum())} classes{note})",
                 fontsize=10)
    out = (Path(out_path) if out_path
           else _run_dir_of(eval_csv) / PLOTS_DIR / f"{eval_csv.stem}_ap.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _has_columns(path: Path, *names: str) -> bool:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = [h.strip() for h in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError):
        return False
    lowered = {h.lower() for h in header}
    return all(n.lower() in lowered for n in names)


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """Write every figure of a run folder into ``<run>/plots/``: the training curves of
    ``log.csv`` and the AP bars of each CSV with an ``ap`` column."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"run folder {run} not found")
    written = []
    if (run / LOG_NAME).is_file():
        written.append(plot_training_curves(run / LOG_NAME))
    for path in sorted(run.glob("*.csv")):
        if path.name != LOG_NAME and _has_columns(path, "ap"):
            written.append(plot_class_ap(path))
    if not written:
        raise DataError(f"{run}: no {LOG_NAME} and no evaluation CSV with an 'ap' column; pass a results/<run> folder written by `lesa train`")
    return written
