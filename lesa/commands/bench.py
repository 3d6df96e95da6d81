"""``lesa bench``: the speed benchmarks of ``benchmarks/run.py`` (in a source checkout)."""
from __future__ import annotations

import runpy
from pathlib import Path


def run_bench(args) -> int:
    from lesa.errors import ConfigError

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
    if not script.is_file():
        raise ConfigError("the benchmarks are not installed with the package: in a clone of the repository, run "
                          "`python benchmarks/run.py` (or `pip install -e .` there, then `lesa bench`)")
    argv = (["--quick"] if args.quick else []) + (["--only", *args.only] if args.only else []) + \
        (["--baseline", args.baseline] if args.baseline else []) + (["--out", args.out] if args.out else [])
    return runpy.run_path(str(script))["main"](argv)


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure training step, reading, evaluation and inference speed (source checkout)",
        description="Runs benchmarks/run.py of the source checkout: each figure next to a baseline measured in "
                    "the same run, and their ratio.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    parser.add_argument("--only", nargs="+", metavar="SECTION", help="step, reading, evaluation, inference")
    parser.add_argument("--baseline", metavar="DIR", help="another lesa checkout, measured alternately with this one")
    parser.add_argument("--out", metavar="FILE.md", help="also write the table to this file")
    parser.set_defaults(func=run_bench)
