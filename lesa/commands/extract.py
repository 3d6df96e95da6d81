"""``lesa extract nus-wide|openimages`` (images -> HDF5 features) and ``lesa merge-shards``."""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="output HDF5 feature file")
    parser.add_argument("--images-dir", metavar="DIR", help="folder of the images (default: see above)")
    parser.add_argument("--backbone", default="tf_slim", choices=["tf_slim", "torchvision", "random"],
                        help="tf_slim: the original's weights (--weights vgg_19.ckpt); torchvision: "
                             "ImageNet VGG-19 (downloads unless --weights FILE.pth); random: seeded "
                             "random weights, for tests and throughput benchmarks only")
    parser.add_argument("--weights", metavar="PATH", help="vgg_19.ckpt (tf_slim) or a .pth (torchvision)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                        help="auto: cuda when available")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="processes reading and decoding images (0: in the main process)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                        help="VGG arithmetic; fp32 reproduces the original (see README for the errors)")
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


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract", help="extract VGG-19 conv5_4 features of a dataset split into HDF5",
        description="Decode, preprocess (TF-slim VGG) and run VGG-19 up to conv5_4 on every image of "
                    "a split, writing features (N,196,512), image ids and labels to one HDF5 file.")
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    nus = datasets.add_parser(
        "nus-wide", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="NUS-WIDE Train/Test (labels_1k, labels_81)",
        description="ROOT holds ImageList/, NUS_WID_Tags/, Concepts81.txt, AllLabels/ and Flickr/ "
                    "(images; --images-dir overrides). Missing images, Flickr placeholders and "
                    "files of at most --min-bytes are skipped, as the original did.")
    nus.add_argument("--root", required=True, metavar="DIR")
    nus.add_argument("--split", required=True, choices=["Train", "Test"])
    nus.add_argument("--min-bytes", type=int, default=4000,
                     help="skip files of at most this size (original: 4000)")
    _common(nus)
    nus.set_defaults(func=run_nus_wide)

    oi = datasets.add_parser(
        "openimages", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="Open Images 2018_04 train/validation (labels) or test (seen_labels, unseen_labels)",
        description="ROOT holds <split>-annotations-human-imagelabels.csv, classes-trainable.txt and "
                    "(test) unseen_labels.pkl; images are ROOT/<split>/<ImageID>.jpg unless "
                    "--images-dir is given (e.g. the folder `lesa download openimages` wrote).")
    oi.add_argument("--root", required=True, metavar="DIR")
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


def _extract(args, source) -> int:
    from lesa.features.extract import build_model, extract_features

    model = build_model(args.backbone, args.weights)
    device = args.device
    if device == "auto":
        device = "cuda" if _cuda() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per local process
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    log = (lambda m: print(m, file=sys.stderr)) if args.verbose else None
    summary = extract_features(
        source, args.out, model, device=device, batch_size=args.batch_size, workers=args.workers,
        precision=args.precision, decoder=args.decoder, dtype=args.dtype,
        channels_last=None if args.channels_last == "auto" else args.channels_last,
        resume=args.resume, overwrite=args.overwrite, rank=args.rank, world_size=args.world_size,
        max_pixels=args.max_pixels, progress=not args.no_progress, log=log)
    for line in summary.lines():
        print(line)
    return 0


def run_nus_wide(args) -> int:
    from lesa.datasets.nus_wide import load_nus_wide_split
    from lesa.features.extract import nus_wide_source

    split = load_nus_wide_split(args.root, args.split, args.images_dir, min_bytes=args.min_bytes)
    return _extract(args, nus_wide_source(split))


def run_openimages(args) -> int:
    from lesa.datasets.openimages import ORIGINAL_PARTITION_ROWS, load_openimages_split
    from lesa.features.extract import openimages_source

    rows = ORIGINAL_PARTITION_ROWS if args.original_partition_quirk else None
    split = load_openimages_split(args.root, args.split, args.images_dir, partition_rows=rows)
    return _extract(args, openimages_source(split))


def run_merge_shards(args) -> int:
    from lesa.datasets.h5 import expand_paths
    from lesa.features.extract import merge_shards

    path = merge_shards(expand_paths(args.shards), args.out, overwrite=args.overwrite,
                        progress=not args.no_progress)
    print(f"merged {len(expand_paths(args.shards))} shards into {path}")
    return 0
