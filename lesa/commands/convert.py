"""Bring the original's artefacts over: ``lesa convert-tfrecord`` (TFRecord features -> HDF5).

Each ``_add_*`` function adds one subparser; ``add_commands`` lists them, so another conversion
(e.g. ``import-tf``) is one more function and one more line.
"""
from __future__ import annotations

import argparse


def _add_convert_tfrecord(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-tfrecord", help="the original's TFRecord feature files -> one HDF5 split file",
        description=(
            "Stream the original's TFRecord feature files (plain, ZLIB or GZIP; every CRC verified) "
            "into the HDF5 feature layout that `lesa train` / `lesa evaluate` read. Several inputs "
            "are concatenated in the order given. A corrupted input stops with an error naming the "
            "record; every record before it stays in OUT.h5.partial (not marked complete)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="IN.tfrecords [IN2.tfrecords ...] OUT.h5 (the last path is the output)")
    parser.add_argument("--dataset", required=True, choices=["nus-wide", "openimages"],
                        help="which dataset the files hold (checked against the records' keys)")
    parser.add_argument("--split", metavar="NAME",
                        help="split name stored in the file (default: from the input file name, "
                             "e.g. NUS_WIDE_Train_... -> Train, train_feature_... -> train)")
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
    from lesa.errors import ConfigError

    if len(args.paths) < 2:
        raise ConfigError("convert-tfrecord needs at least one input and the output: IN.tfrecords OUT.h5")
    *inputs, out = args.paths
    if not out.endswith((".h5", ".hdf5")):
        raise ConfigError(f"the last path {out!r} is the output and should end in .h5")
    summary = convert_tfrecords(
        inputs, out, dataset=args.dataset, split=args.split, dtype=args.dtype,
        compression=None if args.compression == "auto" else args.compression,
        resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, img_ids=args.img_ids)
    dims = ", ".join(f"{name} {dim}" for name, dim in summary.label_dims.items())
    resumed = f" ({summary.n_skipped} already there)" if summary.n_skipped else ""
    print(f"wrote {summary.path}: {summary.n_records} records{resumed}, schema {summary.schema}, labels: {dims}")
    return 0


def _add_import_tf(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-tf", help="an original TF1 checkpoint (model.ckpt) -> a native lesa checkpoint",
        description=(
            "Read a checkpoint written by the original code (the model.ckpt prefix: .index + .data-*), "
            "infer the model configuration from the tensors it holds (number of heads, separate W1, "
            "batch-norm or conv biases, trainable vectors), print it, and write a native .pt. "
            "Fixed label vectors are not stored in TF checkpoints: give the experiment "
            "configuration (--config) so they are read from its label-vector pickle."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", help="TF checkpoint prefix (results/.../model.ckpt) or its .index file")
    parser.add_argument("--out", required=True, help="native checkpoint to write (model.pt)")
    parser.add_argument("--config", help="experiment configuration (TOML or a name in configs/) giving "
                                         "the label vectors and the loss weights")
    parser.add_argument("--data-dir", metavar="DIR", help="folder the configuration's label files are under")
    parser.add_argument("--label-vectors", metavar="PKL", help="with --config: its label-vector pickle (data.label_vectors)")
    parser.add_argument("--vectors", metavar="PKL",
                        help="without --config: a pickle of (seen (C,300), unseen (U,300)) vectors used as they are")
    parser.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="override a configuration setting (repeatable)")
    parser.set_defaults(func=run_import_tf)


def run_import_tf(args) -> int:
    from lesa.checkpoint import save_checkpoint, tf_prefix
    from lesa.errors import ConfigError
    from lesa.tf_weights import import_tf_checkpoint

    prefix = tf_prefix(args.checkpoint) or args.checkpoint
    cfg = None
    seen = unseen = labels = None
    if args.config and args.vectors:
        raise ConfigError("give either --config (the experiment's label files) or --vectors, not both")
    if args.config:
        from lesa.commands.train import config_from_args
        from lesa.tasks import load_task

        cfg = config_from_args(argparse.Namespace(
            config=args.config, set=args.set, data_dir=args.data_dir, label_vectors=args.label_vectors,
            out=None, train=None, validation=None, test=None, preload=None, device=None))
        task = load_task(cfg)
        seen, unseen = task.seen_vecs, task.unseen_vecs
        labels = {"seen": task.seen_names, "unseen": task.unseen_names}
    elif args.vectors:
        from lesa.datasets.embeddings import load_vector_pair

        seen, unseen = load_vector_pair(args.vectors, dim=None)
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


SUBCOMMANDS = [_add_convert_tfrecord, _add_import_tf]


def add_commands(subparsers) -> None:
    for add in SUBCOMMANDS:
        add(subparsers)
