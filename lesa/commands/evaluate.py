"""``lesa evaluate`` (test reports of native or TF checkpoints), ``lesa evaluate-released`` and ``lesa score``
(the same protocol for any method's predictions)."""
from __future__ import annotations

from pathlib import Path


def checkpoint_tag(path: str) -> str:
    """F1_<tag>_*: 'ES' for early-stopping checkpoints, 'f' for final ones (as the original named them)."""
    stem = Path(path).name.split(".")[0]
    if stem.endswith("_ES"):
        return "ES"
    if stem in ("model", "last"):
        return "f"
    return stem


def run(args) -> int:
    from lesa.commands.train import config_from_args
    from lesa.evaluate import evaluate_checkpoints

    cfg = config_from_args(args)
    if args.precision:
        from lesa.experiment import set_value

        set_value(cfg, "evaluate.precision", args.precision, where="command line")
    tags = args.tag or []
    pairs = [(tags[i] if i < len(tags) else checkpoint_tag(c), c) for i, c in enumerate(args.checkpoint)]
    evaluate_checkpoints(cfg, pairs, out_dir=args.out, save_scores=args.save_scores,
                         progress=not args.no_progress, overwrite=args.overwrite)
    return 0


RELEASED = "results/release_zs_NUS_WIDE_log_GPU_7_1587185916d2570488/model.ckpt"


def run_released(args) -> int:
    from lesa.commands.train import config_from_args
    from lesa.evaluate import evaluate_checkpoints
    from lesa.released import compare_with_published

    args.config = "nus_wide_zero_shot"
    cfg = config_from_args(args)
    (summary,) = evaluate_checkpoints(cfg, [("f", args.checkpoint)], out_dir=args.out, progress=not args.no_progress,
                                      overwrite=args.overwrite)
    print("\nthe released checkpoint's published results next to this evaluation:")
    print(compare_with_published(summary))
    return 0


TASK_CONFIGS = {"openimages": "openimages_evaluate"}  # the bundled configuration of a task (else its name)


def run_score(args) -> int:
    from lesa.commands.train import config_from_args
    from lesa.datasets.h5 import open_features
    from lesa.experiment import set_value
    from lesa.score import score

    if not args.config:
        task = args.task
        if task is None:  # the split says which dataset it is
            with open_features(args.labels) as split:
                task = "openimages" if split.attrs.get("dataset") == "openimages" else "nus_wide_zero_shot"
        args.config = TASK_CONFIGS.get(task, task)
    cfg = config_from_args(args)
    if args.task:
        set_value(cfg, "experiment.task", args.task, where="command line")
    if args.k:
        for key in ("k", "k_gzs", "k_seen"):
            set_value(cfg, f"evaluate.{key}", args.k, where="command line")
    out = args.out or str(Path(args.predictions).with_suffix("")) + "_reports"
    score(cfg, args.predictions, args.labels, out, tag=args.tag, overwrite=args.overwrite)
    return 0


def add_commands(subparsers) -> None:
    from lesa.commands.train import add_config_arguments

    p = subparsers.add_parser(
        "evaluate", help="evaluate checkpoints: zero-shot, generalised and seen reports",
        description="Evaluate native (.pt) or original TF (model.ckpt prefix) checkpoints on the test split "
                    "of a configuration; writes F1_<tag>_*_test.csv, summary_<tag>.json, prints a table.")
    add_config_arguments(p)
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT",
                   help="model.pt / model_ES.pt, or a TF prefix such as results/x/model.ckpt")
    p.add_argument("--tag", nargs="+", help="report tags, one per checkpoint (default: ES for *_ES, else f)")
    p.add_argument("--save-scores", metavar="NPZ", help="also save the raw scores and labels")
    p.add_argument("--overwrite", action="store_true",
                   help="replace reports of the same tag already in the output folder")
    p.add_argument("--precision", metavar="fp32|tf32|bf16",
                   help="forward pass (evaluate.precision): fp32 (default, exact), tf32 (GPU) or bf16 (faster "
                        "on a GPU or a CPU with bfloat16 units, much slower on a CPU without them; scores "
                        "~4e-3 off)")
    p.set_defaults(func=run)

    r = subparsers.add_parser(
        "evaluate-released", help="evaluate the original's released NUS-WIDE checkpoint against its published results",
        description="Evaluate the released NUS-WIDE zero-shot checkpoint of the original (its model.ckpt prefix, "
                    "from the original repository's results/ folder) with the nus_wide_zero_shot "
                    "configuration, and print the published figures next to the measured ones.")
    r.add_argument("--checkpoint", default=RELEASED, metavar="PREFIX",
                   help="the released model.ckpt prefix (its .index and .data-00000-of-00001 files)")
    r.add_argument("--data-dir", metavar="DIR", help="the data folder (data.dir, default ./data)")
    r.add_argument("--test", nargs="+", metavar="H5", help="NUS-WIDE test features (data.test)")
    r.add_argument("--label-vectors", metavar="PKL", help="the NUS-WIDE label-vector pickle (data.label_vectors)")
    r.add_argument("--out", default="results/released_nus_wide", help="where the reports go")
    r.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE")
    r.add_argument("--overwrite", action="store_true", help="replace earlier reports in --out")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=run_released)

    sc = subparsers.add_parser(
        "score", help="the exact evaluation protocol for any method's predictions",
        description="Score a matrix of predictions (images x labels: .npy, .npz or HDF5, with img_ids and "
                    "label_names when it has them) against a lesa HDF5 split with the protocol of `lesa "
                    "evaluate`: the same table, CSV and JSON reports. Rows are matched by image id (or taken "
                    "in the split's order), columns by label name (or taken in the task's order).")
    sc.add_argument("predictions", metavar="PREDICTIONS", help="scores: .npy, .npz (lesa evaluate --save-scores "
                                                                 "too) or .h5 with a 'scores' array")
    sc.add_argument("--labels", required=True, metavar="SPLIT.h5", help="the split's lesa HDF5 file (its labels)")
    sc.add_argument("--task", help="nus_wide_zero_shot, nus_wide_multilabel or openimages (default: from the split)")
    sc.add_argument("--config", help="configuration giving the label lists and K values (default: the task's)")
    sc.add_argument("--data-dir", metavar="DIR", help="the data folder holding the label lists (default ./data)")
    sc.add_argument("--k", nargs="+", type=int, help="the K of every report (default: the configuration's)")
    sc.add_argument("--out", help="where the reports go (default: PREDICTIONS_reports/)")
    sc.add_argument("--tag", default="f", help="report file tag: F1_<tag>_*_test.csv")
    sc.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE")
    sc.add_argument("--overwrite", action="store_true", help="replace earlier reports of the same tag in --out")
    sc.set_defaults(func=run_score)
