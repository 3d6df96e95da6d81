"""``lesa train CONFIG``: train one experiment (configs/*.toml), with CLI overrides and --resume."""
from __future__ import annotations

import argparse
import os

def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``lesa train`` and ``lesa evaluate`` (each is a config override)."""
    p.add_argument("config", help="configuration: a bundled name (nus_wide_zero_shot, nus_wide_multilabel, "
                                  "openimages_train, openimages_evaluate), a TOML file, or a run folder")
    p.add_argument("--data-dir", metavar="DIR",
                   help="the data folder (data.dir, default ./data): relative data paths are taken inside it")
    p.add_argument("--out", help="output folder (experiment.out; default results/<name>)")
    p.add_argument("--train", nargs="+", metavar="H5", help="training feature file(s) or glob (data.train)")
    p.add_argument("--validation", nargs="+", metavar="H5", help="validation feature file(s) (data.validation)")
    p.add_argument("--test", nargs="+", metavar="H5", help="test feature file(s) (data.test)")
    p.add_argument("--label-vectors", metavar="PKL", help="label-vector pickle (data.label_vectors)")
    p.add_argument("--preload", metavar="none|ram|gpu|auto", help="data.preload")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (train.device)")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override any setting, e.g. --set train.n_iters=1000 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# flag -> the setting it overrides (the values are TOML-typed by the setting, as --set values)
FLAG_SETTINGS = {"data_dir": "data.dir", "out": "experiment.out", "train": "data.train",
                 "validation": "data.validation", "test": "data.test", "label_vectors": "data.label_vectors",
                 "preload": "data.preload", "device": "train.device", "n_iters": "train.n_iters",
                 "shuffle": "data.shuffle"}


def config_from_args(args, resume: bool = False):
    """The configuration of ``args.config`` with the flags and ``--set`` overrides applied. With
    ``resume``, the run folder's own ``config.toml`` is the configuration: overrides may only change
    where things are and how they are read (``RUNTIME_SETTINGS``); anything else is refused."""
    from lesa.errors import ConfigError
    from lesa.experiment import apply_overrides, load_config, resolve_data_paths, resume_differences, set_value

    def with_overrides(cfg):
        for flag, key in FLAG_SETTINGS.items():
            value = getattr(args, flag, None)
            if value not in (None, False):
                set_value(cfg, key, value, where="command line")
        return resolve_data_paths(apply_overrides(cfg, getattr(args, "set", None) or []))

    cfg = with_overrides(load_config(args.config))
    if not resume:
        return cfg
    saved_path = cfg.out_dir / "config.toml"
    if not saved_path.is_file():
        raise ConfigError(f"--resume: {cfg.out_dir} holds no run (no config.toml); start it without "
                          "--resume, or name the run folder (lesa train RUN_DIR --resume)")
    saved = with_overrides(load_config(saved_path))
    changed = resume_differences(load_config(saved_path), cfg)
    if changed:
        raise ConfigError(f"--resume continues {cfg.out_dir} as it was configured, but these settings differ "
                          f"from its config.toml: {'; '.join(changed)}. Resume without them "
                          f"(lesa train {cfg.out_dir} --resume), or start a new run with another --out")
    return saved


def run(args) -> int:
    from lesa.train import train

    cfg = config_from_args(args, resume=args.resume)
    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"done: {result['iterations']} iterations; outputs in {result['out_dir']}")
        print(f"next: lesa plot {result['out_dir']}")
    return 0


def run_build_vectors(args) -> int:
    from lesa.datasets.embeddings import (load_label_ids_pickle, read_label_list, save_vector_pair,
                                          vectors_from_glove)
    from lesa.datasets.openimages import read_class_descriptions

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
    p.add_argument("--resume", action="store_true",
                   help="continue a run from its last.pt: `lesa train RUN_DIR --resume` (or the configuration "
                        "and --out it was started with); its settings cannot be changed")
    p.set_defaults(func=run)
