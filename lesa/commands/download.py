"""``lesa download openimages``: fetch an Open Images split as 256-pixel JPEGs into
DATA/OpenImages/image_data/<split>, where ``lesa extract openimages`` reads them."""
from __future__ import annotations

import argparse


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "download", help="download image datasets (Open Images)",
        description="Download the images a dataset lists.")
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    oi = datasets.add_parser(
        "openimages", help="Open Images 2017_11 / 2018_04 images -> OUT/<ImageID>.jpg",
        description=(
            "Parallel, MD5-verified, resumable download of an Open Images split. Each image is "
            "resized so its short side is 256 and written as OUT/<ImageID>.jpg (default OUT: "
            "DATA/OpenImages/image_data/<split>, where `lesa extract openimages` reads them, as the "
            "original's image_data/<split>/). Re-running skips "
            "finished files and images that failed for good; failures are listed in "
            "OUT/download_failures.csv, counts in OUT/download_summary.json."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    oi.add_argument("--split", required=True, choices=["train", "validation", "test"])
    oi.add_argument("--data-dir", metavar="DIR", help="the data folder (default ./data)")
    oi.add_argument("--out", metavar="DIR", help="output folder (default DATA/OpenImages/image_data/SPLIT)")
    oi.add_argument("--csv", metavar="PATH",
                    help="image list with ImageID, OriginalURL, OriginalMD5 columns (2017_11 "
                         "images.csv or 2018_04 *-images-with-rotation.csv; .gz accepted); "
                         "default: looked up under --data-root")
    oi.add_argument("--data-root", metavar="DIR",
                    help="where 2017_11/<split>/images.csv or 2018_04/... are looked up "
                         "(default DATA/OpenImages)")
    oi.add_argument("--workers", type=int, default=16, help="parallel downloads (threads)")
    oi.add_argument("--retries", type=int, default=3,
                    help="extra tries after a network error, timeout or 5xx (never after 404)")
    oi.add_argument("--timeout", type=float, default=30.0, metavar="S",
                    help="seconds to wait for the connection, the headers and each read")
    oi.add_argument("--backoff", type=float, default=1.0, metavar="S",
                    help="first retry waits about S seconds, doubling each time")
    oi.add_argument("--limit", type=int, metavar="N", help="only the first N images of the list")
    oi.add_argument("--short-side", type=int, default=256, metavar="PX")
    oi.add_argument("--quality", type=int, default=90, help="JPEG quality of the written files")
    oi.add_argument("--thumbnails", action="store_true",
                    help="download Thumbnail300KURL instead of OriginalURL (much smaller; no MD5 "
                         "check, as the CSV's MD5 is the original's)")
    oi.add_argument("--apply-rotation", action="store_true",
                    help="rotate by the 2018_04 Rotation column to make images upright "
                         "(original: not applied)")
    oi.add_argument("--verify-existing", action="store_true",
                    help="decode files already in OUT and download again those that are broken")
    oi.add_argument("--retry-failed", action="store_true",
                    help="also request images that failed for good in an earlier run (404, MD5)")
    oi.add_argument("--failures", metavar="PATH",
                    help="failures report path (default OUT/download_failures.csv)")
    oi.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    oi.set_defaults(func=run_openimages)


def run_openimages(args) -> int:
    import shlex
    from pathlib import Path

    from lesa import layout
    from lesa.download import DownloadOptions, download_openimages

    default_out = layout.resolve(layout.OPENIMAGES_IMAGES, args.data_dir) / args.split
    out = Path(args.out) if args.out else default_out
    data_root = args.data_root or layout.resolve(Path(layout.OPENIMAGES).parent, args.data_dir)
    options = DownloadOptions(
        workers=args.workers, retries=args.retries, timeout=args.timeout, backoff=args.backoff,
        short_side=args.short_side, quality=args.quality, apply_rotation=args.apply_rotation,
        verify_existing=args.verify_existing, retry_failed=args.retry_failed)
    summary = download_openimages(
        args.split, out, csv_path=args.csv, data_root=data_root, limit=args.limit,
        thumbnails=args.thumbnails, options=options, progress=not args.no_progress,
        failures_path=args.failures)
    print(summary.format())
    images = "" if out.absolute() == default_out else f" --images-dir {shlex.quote(str(out))}"
    print(f"next: lesa extract openimages --split {args.split} --data-dir "
          f"{shlex.quote(args.data_dir or layout.DATA_DIR)}{images}")
    return 0
