"""``lesa bench``: the speed benchmarks (``lesa.bench``) as one markdown table."""
from __future__ import annotations

import argparse
import sys


SECTIONS = ["step", "ranking", "evaluation", "inference", "reading", "schedule"]  # lesa.bench.SECTIONS (kept light: no torch import)


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure training step, ranking loss, evaluation, inference and feature-file reading speed",
        description=(
            "Print one markdown table: each figure, the baseline it is compared with (measured in the "
            "same run, or a recorded figure where that cannot run here, marked as such) and the ratio. "
            "GPU rows run when a CUDA device is present, else they read 'not measured'."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer repetitions (about a minute on 2 cores)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)})")
    parser.add_argument("--out", metavar="FILE.md", help="also write the table to this file")
    parser.set_defaults(func=run_bench)


def run_bench(args) -> int:
    from lesa.bench import run

    table = run(quick=args.quick, only=args.only, progress=lambda m: print(m, file=sys.stderr))
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


def add_commands(subparsers) -> None:
    _add_bench(subparsers)
