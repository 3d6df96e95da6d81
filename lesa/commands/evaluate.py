"""``lesa evaluate CONFIG --checkpoint PATH``: test reports of native (.pt) or TF (model.ckpt) checkpoints."""
from __future__ import annotations

from pathlib import Path


def checkpoint_tag(path: str) -> str:
    """F1_<tag>_*: 'ES' for early-stopping checkpoints, 'f' for final ones (as the original named them)."""
    name = Path(path).name
    for suffix in (".index", ".pt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    stem = name.split(".")[0]
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
    pairs = []
    for i, ckpt in enumerate(args.checkpoint):
        pairs.append((tags[i] if i < len(tags) else checkpoint_tag(ckpt), ckpt))
    evaluate_checkpoints(cfg, pairs, out_dir=args.out, save_scores=args.save_scores,
                         progress=not args.no_progress, overwrite=args.overwrite)
    return 0


RELEASED = "results/release_zs_NUS_WIDE_log_GPU_7_1587185916d2570488/model.ckpt"


def run_released(args) -> int:
    import json

    from lesa.commands.train import config_from_args
    from lesa.evaluate import evaluate_checkpoints
    from lesa.released import compare_with_published

    args.config = "nus_wide_zero_shot"
    cfg = config_from_args(args)
    (summary,) = evaluate_checkpoints(cfg, [("f", args.checkpoint)], out_dir=args.out, progress=not args.no_progress,
                                      overwrite=args.overwrite)
    print("\nthe released checkpoint's published results next to this evaluation:")
    print(compare_with_published(json.loads(json.dumps(summary))))
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
