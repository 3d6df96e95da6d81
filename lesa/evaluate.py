"""Evaluation: scores over a split, the original's protocol (``lesa.metrics``) and its report files.

Reports ``F1_<f|ES>[_<name>]_test.csv`` in the original's columns: nus_wide_zero_shot ``_81``
(zero-shot, 81 unseen: classes,F1_3,P_3,R_3,...,ap) and ``_1k`` (generalised, 81+925 unseen first:
g_F1_3,...,aP); nus_wide_multilabel (no name): the 81 labels; openimages: seen (no name), ``_zs``
unseen, ``_gzs`` unseen+seen. F1/P/R hold the overall values on every row, ``ap`` the per-class AP
(original: ``evaluate_k(mode_F1='overall')``'s one number, broadcast by pandas). original: NUS-WIDE's
``_1k`` came out with empty g_* columns and Open Images' ``_gzs`` listed names seen-first while its
scores are unseen-first; here the columns hold the values and the names follow the scores.
Also written: ``summary_<tag>.json`` and, on request, the raw scores (``.npz``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lesa import metrics
from lesa.checkpoint import load_model
from lesa.datasets.stream import Batch, RangeReader, open_split
from lesa.device import pick_device, precision_context
from lesa.errors import ConfigError, ShapeError
from lesa.experiment import check_config
from lesa.files import atomic_write, atomic_write_text, write_csv
from lesa.tasks import load_task

HEADS = ("logits", "zs_logits", "gzs_logits")


# -- scores ---------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model, source, batch_size: int = 1000, heads=HEADS, batchnorm: str = "inference",
            progress: bool = False, desc: str = "", precision: str = "fp32") -> tuple[dict, dict]:
    """Scores ``{head: (N, C) float32}`` and labels ``{key: (N, D) int8}`` of a ``RangeReader``, or
    scores of features (N, 196, 512) (no labels). ``batchnorm="batch"``: each batch's statistics,
    the moving ones left unchanged (original: NUS-WIDE multi-label validated without inference mode).
    ``precision``: fp32 (exact), tf32 (GPU) or bf16 (autocast; scores ~4e-3 off)."""
    was_training = model.training
    saved = None
    if batchnorm == "batch":
        saved = {k: v.clone() for k, v in model.named_buffers()}
        model.train()
    else:
        model.eval()
    if hasattr(source, "iter_batches"):
        batches = source.iter_batches(batch_size, progress=progress, desc=desc)
    else:
        device = next(model.parameters()).device
        features = torch.as_tensor(source)
        batches = (Batch(features[a:a + batch_size].to(device), {}, np.arange(a, a + batch_size))
                   for a in range(0, features.shape[0], batch_size))
    scores = {h: [] for h in heads}
    labels: dict[str, list] = {}
    try:
        for batch in batches:
            with precision_context(precision, batch.features.device):
                out = model.scores(batch.features, heads)
            for h, values in out.items():
                scores[h].append(values.float().cpu().numpy())
            for k, v in batch.labels.items():
                labels.setdefault(k, []).append(v.cpu().numpy().astype(np.int8))
    finally:
        if saved is not None:
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])
        model.train(was_training)
    return ({h: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for h, v in scores.items()},
            {k: np.concatenate(v) for k, v in labels.items()})


def gzs_labels(labels: dict) -> np.ndarray:
    """Generalised labels: unseen first, then seen (the order of ``gzs_logits``)."""
    return np.concatenate([labels["unseen"], labels["seen"]], axis=1)


# -- report tables --------------------------------------------------------------------------------
@dataclass
class ReportTable:
    """One CSV report: per-class rows plus the summary numbers."""

    name: str  # file-name part ("81", "1k", "", "zs", "gzs")
    title: str  # for the printed table
    columns: list[str]
    rows: list[list]
    summary: dict = field(default_factory=dict)


def make_table(name: str, title: str, scores: np.ndarray, labels: np.ndarray, ks, names=None,
               prefix: str = "", ap_column: str = "ap") -> ReportTable:
    """Overall top-K F1/P/R for each K (repeated on every row) and the per-class AP."""
    if scores.shape != labels.shape:
        raise ShapeError(f"{title}: scores {scores.shape} vs labels {labels.shape}")
    ap = metrics.average_precision(scores, labels)
    columns = (["classes"] if names is not None else [])
    values = []
    summary = {"n_images": int(scores.shape[0]), "n_labels": int(scores.shape[1]), "mAP": float(np.mean(ap))}
    f1_of_k = metrics.topk_f1_many(scores, labels, ks, mode="overall")  # one top-k pass for every K
    for k in ks:
        f1, p, r = f1_of_k[int(k)]
        columns += [f"{prefix}F1_{k}", f"{prefix}P_{k}", f"{prefix}R_{k}"]
        values += [f1, p, r]
        summary.update({f"F1@{k}": f1, f"P@{k}": p, f"R@{k}": r})
    columns.append(ap_column)
    rows = [([names[c]] if names is not None else []) + values + [float(ap[c])] for c in range(scores.shape[1])]
    return ReportTable(name=name, title=title, columns=columns, rows=rows, summary=summary)


def report_heads(task) -> tuple[str, ...]:
    """The heads a task's test reports read."""
    return {"nus_wide_zero_shot": ("zs_logits", "gzs_logits"), "nus_wide_multilabel": ("logits",)}.get(task.task, HEADS)


def test_tables(task, scores: dict, labels: dict, ev) -> list[ReportTable]:
    """The report tables of ``task`` (a ``TaskData``) for the test split: those whose head is in
    ``scores`` (``logits`` seen, ``zs_logits`` unseen, ``gzs_logits`` unseen + seen)."""
    U, C = len(task.unseen_names), task.n_seen
    if task.task == "nus_wide_zero_shot":
        tables = [("zs_logits", "81", f"zero-shot ({U} unseen)", "unseen", ev.k, task.unseen_names, {}),
                  ("gzs_logits", "1k", f"generalised ({U}+{C})", "gzs", ev.k_gzs, None,
                   {"prefix": "g_", "ap_column": "aP"})]
    elif task.task == "nus_wide_multilabel":
        tables = [("logits", "", f"multi-label ({C})", "seen", ev.k, task.seen_names, {})]
    else:
        tables = [("logits", "", f"seen ({C})", "seen", ev.k_seen, task.seen_names, {}),
                  ("zs_logits", "zs", f"zero-shot ({U} unseen)", "unseen", ev.k, task.unseen_names, {}),
                  ("gzs_logits", "gzs", f"generalised ({U}+{C})", "gzs", ev.k_gzs,
                   task.unseen_names + task.seen_names, {"prefix": "g_"})]
    return [make_table(name, title, scores[head], gzs_labels(labels) if key == "gzs" else labels[key], ks,
                       names=names, **options)
            for head, name, title, key, ks, names, options in tables if head in scores]


def validation_metrics(task, scores: dict, labels: dict, k: int) -> dict:
    """The columns the original logged: mF1 (seen F1@k), mF1_u (NUS-WIDE zero-shot), mAP (seen)."""
    f1, _, _ = metrics.topk_f1(scores["logits"], labels["seen"], k, mode="overall")
    out = {"mF1": f1}
    if task.task == "nus_wide_zero_shot":
        out["mF1_u"] = metrics.topk_f1(scores["zs_logits"], labels["unseen"], k, mode="overall")[0]
    out["mAP"] = metrics.mean_average_precision(scores["logits"], labels["seen"])
    return out


def report_file(out_dir: Path, tag: str, table: ReportTable) -> Path:
    return Path(out_dir) / f"F1_{tag}{'_' + table.name if table.name else ''}_test.csv"


def write_reports(out_dir, tag: str, tables: list[ReportTable], extra: dict | None = None) -> dict:
    """Write each table's CSV and ``summary_<tag>.json`` in the folder ``out_dir`` (a Path); returns the summary."""
    summary = {"tag": tag, **(extra or {}), "reports": {}}
    for t in tables:
        path = report_file(out_dir, tag, t)
        write_csv(path, t.columns, t.rows)
        summary["reports"][t.name or "seen"] = {"title": t.title, "file": path.name, **t.summary}
    atomic_write_text(out_dir / f"summary_{tag}.json", json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """A plain-text table of every report in ``summary`` (values in %)."""
    reports = summary["reports"]
    ks = list(dict.fromkeys(key[3:] for r in reports.values() for key in r if key.startswith("F1@")))
    header = ["report", "labels", "images", "mAP"] + [f"{m}@{k}" for k in ks for m in ("F1", "P", "R")]
    lines = []
    for r in reports.values():
        values = [r.get(f"{m}@{k}") for k in ks for m in ("F1", "P", "R")]
        lines.append([r["title"], str(r["n_labels"]), str(r["n_images"]), f"{100 * r['mAP']:.1f}",
                      *("-" if v is None else f"{100 * v:.1f}" for v in values)])
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    fmt = lambda row: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths)))  # noqa: E731
    title = f"{summary.get('tag', '')} {summary.get('checkpoint', '')}".strip()
    if summary.get("precision", "fp32") != "fp32":
        title += f" (forward pass in {summary['precision']}: not the exact fp32 scores)"
    return "\n".join([title, fmt(header), *(fmt(r) for r in lines)])


def refuse_existing_reports(out_dir: Path, tags, overwrite: bool, what: str = "") -> None:
    """ConfigError if ``out_dir`` already holds reports of one of ``tags`` (unless ``overwrite``)."""
    existing = [p.name for tag in tags for p in sorted([*out_dir.glob(f"F1_{tag}_*test.csv"),
                                                        *out_dir.glob(f"F1_{tag}_test.csv"),
                                                        *out_dir.glob(f"summary_{tag}.json")])]
    if existing and not overwrite:
        raise ConfigError(f"{out_dir} already holds the reports {', '.join(existing)}{what}; choose another folder "
                          "with --out DIR, or pass --overwrite to replace them")


def evaluate_checkpoints(cfg, checkpoints: list[tuple[str, str]], out_dir=None, save_scores: str | None = None,
                         device: str | None = None, progress: bool = True, log=print,
                         overwrite: bool = False) -> list[dict]:
    """``lesa evaluate``: for each (tag, checkpoint path), write the reports and print the table.
    Everything is checked before the test split is read: the configuration's files, every
    checkpoint (loaded), and that no earlier reports would be replaced (unless ``overwrite``)."""
    check_config(cfg, splits=("test",))
    dev = pick_device(device or cfg.train.device)
    task = load_task(cfg)
    out_dir = Path(out_dir or cfg.out_dir).absolute()
    refuse_existing_reports(out_dir, [tag for tag, _ in checkpoints], overwrite,
                            " (of a training run or an earlier evaluation)")
    # native .pt or TF checkpoints, with the task's label vectors (the configuration decides the
    # unseen labels, e.g. a top-400 subset)
    unseen_vecs = task.unseen_vecs if task.has_unseen else None
    models = [(tag, ckpt, load_model(ckpt, seen_vecs=task.seen_vecs, unseen_vecs=unseen_vecs, model_config=cfg.model,
                                     device=dev).model) for tag, ckpt in checkpoints]
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"evaluating {len(models)} checkpoint(s) on {', '.join(cfg.data.test)}; reports go to {out_dir}")
    results = []
    with open_split(cfg.data.test, "test") as split:
        reader = RangeReader(split, task.test_labels, preload=cfg.data.preload, device=dev,
                             chunk_mb=cfg.data.chunk_mb, workers=cfg.data.workers, progress=progress, name="test")
        heads, precision = report_heads(task), cfg.evaluate.precision
        for tag, ckpt, model in models:
            scores, labels = predict(model, reader, cfg.data.eval_batch_size, heads=heads, progress=progress,
                                     desc=f"test ({tag})", precision=precision)
            if save_scores:  # what `lesa score` reads: the heads, with the images' ids and the labels' names
                names = {"logits": task.seen_names, "zs_logits": task.unseen_names,
                         "gzs_logits": task.unseen_names + task.seen_names}
                arrays = {**scores, **{f"names_{h}": np.array(names[h]) for h in heads},
                          "img_ids": np.array(split.img_ids)}
                atomic_write(save_scores if len(checkpoints) == 1 else f"{save_scores}.{tag}.npz",
                             lambda f: np.savez(f, **arrays))
            summary = write_reports(out_dir, tag, test_tables(task, scores, labels, cfg.evaluate),
                                    extra={"checkpoint": str(ckpt), "task": task.task, "precision": precision,
                                           "experiment": cfg.experiment.name})
            log(format_summary(summary))
            log("wrote " + ", ".join(str(out_dir / r["file"]) for r in summary["reports"].values())
                + f" and {out_dir / f'summary_{tag}.json'}")
            results.append(summary)
    return results
