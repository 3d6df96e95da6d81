"""``lesa extract nus-wide|openimages`` (images -> HDF5 features) and ``lesa merge-shards``.
Paths default to the data folder's layout (``lesa.layout``); the weights to model/vgg_19.ckpt."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import fields

from lesa import layout

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
SPLITS = {"nus_wide": ("Train", "Test"), "openimages": ("train", "validation", "test")}
COMMAND = {"nus_wide": "nus-wide", "openimages": "openimages"}
TRAIN_CONFIG = {"nus_wide": "nus_wide_zero_shot", "openimages": "openimages_train"}


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default where there is one (the data folder's are in the help texts)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", metavar="DIR", help="the data folder (default ./data) the other paths default to")
    parser.add_argument("--out", metavar="FILE.h5",
                        help="output HDF5 feature file (default DATA/features/<dataset>_<split>.h5)")
    parser.add_argument("--images-dir", metavar="DIR", help="folder of the images (default: see above)")
    parser.add_argument("--backbone", default="tf_slim", choices=["tf_slim", "torchvision", "random"],
                        help="tf_slim: the original's weights (--weights vgg_19.ckpt); torchvision: "
                             "ImageNet VGG-19 (downloads unless --weights FILE.pth); random: seeded "
                             "random weights, for tests and throughput benchmarks only")
    parser.add_argument("--weights", metavar="PATH",
                        help="vgg_19.ckpt (tf_slim; default model/vgg_19.ckpt) or a .pth (torchvision)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                        help="auto: cuda when available")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="processes reading and decoding images (0: in the main process)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                        help="VGG arithmetic: fp32 reproduces the original's features; tf32 and bf16 are faster "
                             "on a GPU (features about 7e-4 and 6e-3 off)")
    parser.add_argument("--decoder", default="exact", choices=["exact", "gpu"],
                        help="exact: TF1-identical CPU decode in the workers; gpu: nvjpeg (faster, "
                             "slightly different pixels)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                        help="storage type of the features")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default="auto",
                        help="NHWC convolutions (auto: on, except fp32 on a GPU; same features to ~1e-7)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run (OUT.partial)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing complete OUT")
    parser.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)),
                        help="this process's shard (default: $RANK, as set by torchrun)")
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                        help="number of shards (default: $WORLD_SIZE); each writes OUT's "
                             "stem.shard-RRRRR-of-WWWWW.h5, joined by `lesa merge-shards`")
    parser.add_argument("--max-pixels", type=int, default=100_000_000,
                        help="refuse larger images (decompression bombs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="print each skipped image")


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract", help="extract VGG-19 conv5_4 features of a dataset split into HDF5",
        description="Decode, preprocess (TF-slim VGG) and run VGG-19 up to conv5_4 on every image of "
                    "a split, writing features (N,196,512), image ids and labels to one HDF5 file.")
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    nus = datasets.add_parser(
        "nus-wide", formatter_class=_Help,
        help="NUS-WIDE Train/Test (labels_1k, labels_81)",
        description="ROOT (default DATA/NUS_WIDE) holds NUS-WIDE's metadata as its zip files unpack "
                    "(ImageList/, NUS_WID_Tags/, ConceptsList/, Groundtruth/AllLabels/) or as the "
                    "original arranged it (Concepts81.txt and AllLabels/ at the top), and Flickr/ "
                    "(the images; --images-dir overrides). Missing images, Flickr placeholders and "
                    "files of at most --min-bytes are skipped, as the original did.")
    nus.add_argument("--root", metavar="DIR", help="NUS-WIDE's folder (default DATA/NUS_WIDE)")
    nus.add_argument("--split", required=True, choices=["Train", "Test"])
    nus.add_argument("--min-bytes", type=int, default=4000,
                     help="skip files of at most this size (original: 4000)")
    _common(nus)
    nus.set_defaults(func=run_nus_wide)

    oi = datasets.add_parser(
        "openimages", formatter_class=_Help,
        help="Open Images 2018_04 train/validation (labels) or test (seen_labels, unseen_labels)",
        description="ROOT (default DATA/OpenImages/2018_04) holds <split>-annotations-human-imagelabels.csv, "
                    "classes-trainable.txt and (test) unseen_labels.pkl; the images are "
                    "<ImageID>.jpg in image_data/<split> next to ROOT (where `lesa download "
                    "openimages` writes them) unless --images-dir is given.")
    oi.add_argument("--root", metavar="DIR", help="the 2018_04 metadata (default DATA/OpenImages/2018_04)")
    oi.add_argument("--split", required=True, choices=["train", "validation", "test"])
    oi.add_argument("--original-partition-quirk", action="store_true",
                    help="original: look labels up per 40,000-row CSV block (an image straddling two "
                         "blocks is written twice with partial labels)")
    _common(oi)
    oi.set_defaults(func=run_openimages)

    merge = subparsers.add_parser(
        "merge-shards", help="join extraction shards into one split file",
        description="Join the shard files of `lesa extract --world-size N` (paths or a glob) into one "
                    "file, identical to what a single process writes.")
    merge.add_argument("shards", nargs="+", help="shard files or a glob such as 'train.shard-*.h5'")
    merge.add_argument("--out", required=True, metavar="FILE.h5")
    merge.add_argument("--overwrite", action="store_true")
    merge.add_argument("--no-progress", action="store_true")
    merge.set_defaults(func=run_merge_shards)


def _extract(args, dataset: str, load_source) -> int:
    """Load the weights (the quick check), then the dataset's image list, extract, and say what's next."""
    import torch

    from lesa.features.extract import ExtractOptions, build_model, extract_features, shard_path

    model = build_model(args.backbone, args.weights)
    device = args.device
    if device != "cpu" and "LOCAL_RANK" in os.environ and torch.cuda.is_available():  # torchrun: a GPU per process
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    settings = {f.name: getattr(args, f.name) for f in fields(ExtractOptions) if hasattr(args, f.name)}
    options = ExtractOptions(**{**settings, "device": device, "progress": not args.no_progress,
                                "channels_last": None if args.channels_last == "auto" else args.channels_last})
    out = args.out or layout.resolve(layout.features_file(dataset, args.split), args.data_dir)
    log = (lambda message: print(message, file=sys.stderr)) if args.verbose else None
    summary = extract_features(load_source(), out, model, options, log=log)
    for line in summary.lines():
        print(line)
    if args.world_size > 1:
        shards = shard_path(out, 0, args.world_size).name.replace("shard-00000", "shard-*")
        print(f"next (once every rank has finished): lesa merge-shards "
              f"{shlex.quote(str(summary.output.with_name(shards)))} --out {shlex.quote(str(out))}")
        return 0
    folder = shlex.quote(args.data_dir or layout.DATA_DIR)
    todo = [split for split in SPLITS[dataset] if split != args.split
            and not layout.resolve(layout.features_file(dataset, split), args.data_dir).exists()]
    print(f"next: lesa extract {COMMAND[dataset]} --split {todo[0]} --data-dir {folder}" if todo
          else f"next: lesa train {TRAIN_CONFIG[dataset]} --data-dir {folder}")
    return 0


def run_nus_wide(args) -> int:
    from lesa.datasets.nus_wide import load_nus_wide_split
    from lesa.features.extract import nus_wide_source

    root = args.root or layout.resolve(layout.NUS_WIDE, args.data_dir)
    return _extract(args, "nus_wide", lambda: nus_wide_source(
        load_nus_wide_split(root, args.split, args.images_dir, min_bytes=args.min_bytes)))


def run_openimages(args) -> int:
    from lesa.datasets.openimages import ORIGINAL_PARTITION_ROWS, load_openimages_split
    from lesa.features.extract import openimages_source

    root = args.root or layout.resolve(layout.OPENIMAGES, args.data_dir)
    rows = ORIGINAL_PARTITION_ROWS if args.original_partition_quirk else None
    return _extract(args, "openimages", lambda: openimages_source(
        load_openimages_split(root, args.split, args.images_dir, partition_rows=rows)))


def run_merge_shards(args) -> int:
    from lesa.datasets.h5 import expand_paths
    from lesa.features.extract import merge_shards

    shards = expand_paths(args.shards)
    path = merge_shards(shards, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"merged {len(shards)} shards into {path}")
    return 0
