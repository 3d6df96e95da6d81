"""``lesa train CONFIG``: train one experiment (configs/*.toml), with CLI overrides and --resume."""
from __future__ import annotations

import argparse
import os
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
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"done: {result['iterations']} iterations; outputs in {result['out_dir']}")
    return 0


def run_build_vectors(args) -> int:
    from lesa.datasets.embeddings import (load_label_ids_pickle, read_label_list, save_vector_pair,
                                          vectors_from_glove)
    from lesa.tasks import read_class_descriptions

    names = read_class_descriptions(args.names) if args.names else {}
    pair = []
    for path in (args.first, args.second):
        labels = load_label_ids_pickle(path) if str(path).endswith(".pkl") else read_label_list(path)
        labels = [names.get(label, label) for label in labels]
        got = vectors_from_glove(args.glove, labels, allow_missing_labels=args.allow_missing)
        print(f"{path}: {got.report()}")
        pair.append(got.vectors)
    save_vector_pair(args.out, *pair)
    print(f"wrote {args.out}: {pair[0].shape} and {pair[1].shape}")
    return 0


def add_commands(subparsers) -> None:
    v = subparsers.add_parser(
        "build-vectors", help="label-vector pickle from a GloVe text file (for users without the original's)",
        description="Writes (first (A,dim), second (B,dim)) in the original pickle format: NUS-WIDE "
                    "--first TagList1k.txt --second Concepts81.txt; Open Images --first classes-trainable.txt "
                    "--second unseen_labels.pkl --names class-descriptions.csv. Multi-word labels are averaged; "
                    "missing words are reported.")
    v.add_argument("--glove", required=True, help="GloVe text file (word v1 ... vN per line)")
    v.add_argument("--first", required=True, help="label list (.txt, one per line) or ids (.pkl)")
    v.add_argument("--second", required=True, help="label list (.txt) or ids (.pkl)")
    v.add_argument("--names", help="CSV 'id,name' mapping label ids to words (Open Images class-descriptions.csv)")
    v.add_argument("--out", required=True, help="output pickle")
    v.add_argument("--allow-missing", action="store_true", help="zero vectors for labels with no known word")
    v.set_defaults(func=run_build_vectors)

    p = subparsers.add_parser(
        "train", help="train LESA on HDF5 features (one experiment config)",
        description="Train one experiment. Writes log.csv, description.txt, config.toml, model_ES.pt, "
                    "model.pt, last.pt and the test reports F1_{f,ES}_*_test.csv + summary_*.json.")
    add_config_arguments(p)
    p.add_argument("--n-iters", type=int, help="train.n_iters")
    p.add_argument("--shuffle", action="store_true", help="shuffle the training records (data.shuffle)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.set_defaults(func=run)
