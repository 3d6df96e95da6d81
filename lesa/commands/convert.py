"""Bring the original's artefacts over: ``lesa convert-tfrecord`` (TFRecord features -> HDF5) and
``lesa import-tf`` (a TF checkpoint -> a native one)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from lesa import layout
from lesa.errors import ConfigError


def _add_convert_tfrecord(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-tfrecord", help="the original's TFRecord feature files -> one HDF5 split file",
        description=(
            "Stream the original's TFRecord feature files (plain, ZLIB or GZIP; every CRC verified) "
            "into the HDF5 feature layout that `lesa train` / `lesa evaluate` read, by default in the "
            "data folder where the configurations look (DIR/features/NUS_WIDE_Train.h5, "
            "DIR/features/OpenImages_test.h5, ...). Several inputs are concatenated in the order given. "
            "A corrupted input stops with an error naming the record; every record before it stays "
            "in OUT.h5.partial (not marked complete): fix the input and rerun with --resume."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="IN.tfrecords [IN2.tfrecords ...] [OUT.h5]: the inputs, then optionally the "
                             "output (a last path ending in .h5); default output: "
                             "DIR/features/<dataset>_<split>.h5")
    parser.add_argument("--dataset", required=True, choices=["nus-wide", "openimages"],
                        help="which dataset the files hold (checked against the records' keys)")
    parser.add_argument("--split", metavar="NAME",
                        help="split name stored in the file and used in the default output name "
                             "(default: what the records tell - Open Images test records carry seen and "
                             "unseen labels - else the input file name, e.g. NUS_WIDE_Train_... -> Train, "
                             "train_feature_... -> train)")
    parser.add_argument("--data-dir", metavar="DIR", default=layout.DATA_DIR,
                        help="the data folder the default output goes to (its features/ folder)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="feature storage precision (float16 halves the size)")
    parser.add_argument("--compression", choices=["auto", "none", "ZLIB", "GZIP"], default="auto",
                        help="input compression (auto: from the first bytes, then the file name)")
    parser.add_argument("--img-ids", choices=["original", "relative"], default="original",
                        help="original: ids exactly as stored (NUS-WIDE: ./data/NUS_WIDE/Flickr/<concept>/"
                             "<file>.jpg); relative: NUS-WIDE ids as <concept>/<file>.jpg like `lesa extract`")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted conversion (OUT.h5.partial)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT.h5")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run_convert_tfrecord)


def run_convert_tfrecord(args) -> int:
    from lesa.datasets.tfrecord_source import convert_tfrecords

    inputs, out = args.paths, None
    if args.paths[-1].endswith((".h5", ".hdf5")):
        *inputs, out = args.paths
    if not inputs:
        raise ConfigError(f"convert-tfrecord needs the TFRecord file(s) to convert: IN.tfrecords [OUT.h5] "
                          f"({out} is the output)")
    summary = convert_tfrecords(
        inputs, out, dataset=args.dataset, split=args.split, dtype=args.dtype, data_dir=args.data_dir,
        compression=None if args.compression == "auto" else args.compression,
        resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, img_ids=args.img_ids)
    dims = ", ".join(f"{name} {dim}" for name, dim in summary.label_dims.items())
    resumed = f" ({summary.n_skipped} already there)" if summary.n_skipped else ""
    print(f"wrote {summary.path}: {summary.n_records} records{resumed}, split {summary.split}, "
          f"schema {summary.schema}, labels: {dims}")
    print(f"next: {next_command(summary.path, summary.dataset, summary.split, args.data_dir)}")
    return 0


# the configurations that read each dataset's feature files: (training, evaluation)
CONFIGS = {"nus_wide": ("nus_wide_zero_shot", "nus_wide_zero_shot"),
           "openimages": ("openimages_train", "openimages_evaluate")}


def next_command(path, dataset: str, split: str, data_dir: str) -> str:
    """The command that uses a converted file: the configuration's own when the file is where it
    looks in ``data_dir``, otherwise the one with the flag that points it at the file."""
    from lesa.commands.train import config_from_args

    train, evaluate = CONFIGS[dataset]
    cfg = config_from_args(argparse.Namespace(config=train, set=[], data_dir=data_dir))
    folder = f"--data-dir {shlex.quote(str(data_dir))}"
    evaluate_command = f"lesa evaluate {evaluate} --checkpoint CKPT {folder}"
    here = Path(path).absolute()
    for key in ("train", "validation", "test"):
        if here in [Path(p).absolute() for p in getattr(cfg.data, key)]:
            if key == "test" and not all(Path(p).exists() for p in cfg.data.train):
                return evaluate_command
            return f"lesa train {train} {folder}"
    flag = f"{shlex.quote(str(path))}"
    key = split.lower()
    if key == "test":
        return f"{evaluate_command} --test {flag}"
    if key in ("train", "validation"):
        return f"lesa train {train} {folder} --{key} {flag}"
    return f"lesa train {train} {folder} --train {flag} (or --validation / --test: the split is {split!r})"


def _add_import_tf(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-tf", help="an original TF1 checkpoint (model.ckpt) -> a native lesa checkpoint",
        description=(
            "Read a checkpoint written by the original code (the model.ckpt prefix: .index + .data-*), "
            "infer the model configuration from the tensors it holds (number of heads, separate W1, "
            "batch-norm or conv biases, trainable vectors), print it, and write a native .pt. "
            "Fixed label vectors are not stored in TF checkpoints: give the experiment configuration "
            "and the data folder holding its label files (--config nus_wide_zero_shot --data-dir DIR, "
            f"DIR holding {layout.LABEL_VECTORS['nus_wide']} and NUS_WIDE/), or the vectors themselves "
            "(--vectors PKL)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", help="TF checkpoint prefix (results/.../model.ckpt) or its .index file")
    parser.add_argument("--out", required=True, help="native checkpoint to write (model.pt)")
    parser.add_argument("--config", help="experiment configuration (TOML or a name in configs/) giving "
                                         "the label vectors and the loss weights")
    parser.add_argument("--data-dir", metavar="DIR", help="with --config: the data folder its label files are in "
                                                          "(default ./data)")
    parser.add_argument("--label-vectors", metavar="PKL", help="with --config: its label-vector pickle (data.label_vectors)")
    parser.add_argument("--vectors", metavar="PKL",
                        help="without --config: a pickle of (seen (C,300), unseen (U,300)) vectors used as they are")
    parser.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="override a configuration setting (repeatable)")
    parser.set_defaults(func=run_import_tf)


def run_import_tf(args) -> int:
    from lesa.checkpoint import save_checkpoint, tf_prefix
    from lesa.tf_formats import list_tf_checkpoint
    from lesa.tf_weights import VECS, import_tf_checkpoint, infer_config

    prefix = tf_prefix(args.checkpoint) or args.checkpoint
    cfg = seen = unseen = labels = None
    if args.config and args.vectors:
        raise ConfigError("give either --config (the experiment's label files) or --vectors, not both")
    if args.config:
        from lesa.commands.train import config_from_args
        from lesa.experiment import check_config
        from lesa.tasks import load_task

        cfg = config_from_args(argparse.Namespace(config=args.config, set=args.set, data_dir=args.data_dir,
                                                  label_vectors=args.label_vectors))
        check_config(cfg, splits=())  # its label files only: import-tf reads no feature files
        task = load_task(cfg)
        seen, unseen = task.seen_vecs, task.unseen_vecs
        labels = {"seen": task.seen_names, "unseen": task.unseen_names}
    elif args.vectors:
        from lesa.datasets.embeddings import load_vector_pair

        seen, unseen = load_vector_pair(args.vectors, dim=None)
    else:
        shapes = {name: info.shape for name, info in list_tf_checkpoint(prefix).items()}
        if infer_config(shapes) and VECS not in shapes:  # (infer_config refuses a checkpoint that is not LESA's)
            raise ConfigError(
                f"{prefix}: the checkpoint holds no label vectors (the original kept fixed ones as graph constants); "
                "give them with --config nus_wide_zero_shot --data-dir DIR (Open Images: --config openimages_evaluate), "
                f"DIR holding {layout.LABEL_VECTORS['nus_wide']} and NUS-WIDE's NUS_WIDE/NUS_WID_Tags/TagList1k.txt "
                "and NUS_WIDE/ConceptsList/Concepts81.txt, or with --vectors PKL, a pickle of the (seen, unseen) "
                "vectors (`lesa build-vectors` makes one from GloVe)")
    model, extras = import_tf_checkpoint(prefix, seen_vecs=seen, unseen_vecs=unseen,
                                         base=cfg.model if cfg else None)
    save_checkpoint(args.out, model, config=cfg, label_names=labels, include_rng=False)
    c = model.config
    print(f"{prefix}: LESA with T={c.n_attention} attention heads, "
          f"{'separate' if c.separate_w1 else 'shared'} W1, "
          f"{'batch-norm' if c.batchnorm else 'conv biases' if c.conv else 'no conv'}, "
          f"{'trainable' if c.trainable_vecs else 'fixed'} label vectors; "
          f"{model.n_seen} seen, {model.n_unseen} unseen labels")
    print(f"ignored (not model variables): {', '.join(sorted(extras)) or 'none'}")
    print(f"wrote {args.out}")
    return 0


def add_commands(subparsers) -> None:
    _add_convert_tfrecord(subparsers)
    _add_import_tf(subparsers)
