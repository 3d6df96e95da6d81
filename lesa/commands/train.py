"""``lesa train CONFIG``: train one experiment (configs/*.toml), with CLI overrides and --resume."""
from __future__ import annotations

import argparse
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def resolve_config_path(name: str) -> Path:
    """A path, or the name of a bundled configuration (``nus_wide_zero_shot`` -> configs/...toml)."""
    path = Path(name)
    if path.exists() or path.suffix == ".toml":
        return path
    return CONFIG_DIR / f"{name}.toml"


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``lesa train`` and ``lesa evaluate`` (each is a config override)."""
    p.add_argument("config", help="configuration: a TOML file or a name in configs/ "
                                  "(nus_wide_zero_shot, nus_wide_multilabel, openimages_train, openimages_evaluate)")
    p.add_argument("--out", help="output folder (experiment.out)")
    p.add_argument("--train", nargs="+", metavar="H5", help="training feature file(s) or glob (data.train)")
    p.add_argument("--validation", nargs="+", metavar="H5", help="validation feature file(s) (data.validation)")
    p.add_argument("--test", nargs="+", metavar="H5", help="test feature file(s) (data.test)")
    p.add_argument("--label-vectors", metavar="PKL", help="label-vector pickle (data.label_vectors)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder holding the label files named in the config (relative data.* paths resolve here)")
    p.add_argument("--preload", choices=["none", "ram", "gpu", "auto"], help="data.preload")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (train.device)")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override any setting, e.g. --set train.n_iters=1000 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args):
    from lesa.experiment import apply_overrides, load_config

    cfg = load_config(resolve_config_path(args.config), args.set)
    if args.data_dir:
        base = Path(args.data_dir)
        for key in ("label_vectors", "tag_list", "concepts", "seen_label_ids", "unseen_label_ids",
                    "class_descriptions", "top_unseen"):
            value = getattr(cfg.data, key)
            if value and not Path(value).is_absolute():
                setattr(cfg.data, key, str(base / value))
        for key in ("train", "validation", "test"):
            setattr(cfg.data, key, [p if Path(p).is_absolute() else str(base / p) for p in getattr(cfg.data, key)])
    direct = {"experiment.out": args.out, "data.train": args.train, "data.validation": args.validation,
              "data.test": args.test, "data.label_vectors": args.label_vectors, "data.preload": args.preload,
              "train.device": args.device}
    for key, value in direct.items():
        if value is not None:
            from lesa.experiment import set_value

            set_value(cfg, key, value, where="command line")
    for extra in ("n_iters", "shuffle"):
        value = getattr(args, extra, None)
        if value not in (None, False):
            from lesa.experiment import set_value

            set_value(cfg, f"train.{extra}" if extra == "n_iters" else "data.shuffle", value, where="command line")
    return apply_overrides(cfg, [])


def run(args) -> int:
    from lesa.train import train

    cfg = config_from_args(args)
    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"done: {result['iterations']} iterations; outputs in {result['out_dir']}")
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train LESA on HDF5 features (one experiment config)",
        description="Train one experiment. Writes log.csv, description.txt, config.toml, model_ES.pt, "
                    "model.pt, last.pt and the test reports F1_{f,ES}_*_test.csv + summary_*.json.")
    add_config_arguments(p)
    p.add_argument("--n-iters", type=int, help="train.n_iters")
    p.add_argument("--shuffle", action="store_true", help="shuffle the training records (data.shuffle)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.set_defaults(func=run)
