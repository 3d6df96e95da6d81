"""The released NUS-WIDE zero-shot checkpoint of the original and its published test results.

The original repository ships ``results/release_zs_NUS_WIDE_log_GPU_7_1587185916d2570488/`` with
``model.ckpt`` (T=10, batch-norm, fixed GloVe vectors: the paper's setting) and the test reports it
produced (``F1_f_81_test.csv``, ``F1_f_1k_test.csv``). These numbers are what evaluating that
checkpoint with ``lesa`` should reproduce. The original lost the generalised F1 values (empty
columns in its ``F1_f_1k_test.csv``); ``lesa`` reports them.
"""
from __future__ import annotations

# fractions, as in the original's CSV files
PUBLISHED = {
    "zero-shot": {"F1@3": 0.3143, "P@3": 0.2554, "R@3": 0.4083,
                  "F1@5": 0.2878, "P@5": 0.1979, "R@5": 0.5272, "mAP": 0.1856},
    "generalised": {"mAP": 0.0515},
}
PAPER = {"zero-shot": {"F1@3": 0.314, "F1@5": 0.288, "mAP": 0.186}, "generalised": {"mAP": 0.052}}


def compare_with_published(summary: dict) -> str:
    """A text table: each published figure next to what ``lesa evaluate`` measured (summary JSON)."""
    measured = {"zero-shot": summary["reports"].get("81", {}), "generalised": summary["reports"].get("1k", {})}
    lines = [f"{'report':<12} {'metric':<6} {'published':>9} {'lesa':>9} {'difference':>10}"]
    for report, published in PUBLISHED.items():
        for metric, reference in published.items():
            ours = measured[report].get(metric)
            shown = "-" if ours is None else f"{ours:.4f}"
            diff = "-" if ours is None else f"{ours - reference:+.4f}"
            lines.append(f"{report:<12} {metric:<6} {reference:>9.4f} {shown:>9} {diff:>10}")
    for metric in ("F1@3", "F1@5"):
        value = measured["generalised"].get(metric)
        if value is not None:
            lines.append(f"{'generalised':<12} {metric:<6} {'(lost)':>9} {value:>9.4f} {'':>10}")
    return "\n".join(lines)
