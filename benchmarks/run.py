"""Run the speed benchmarks and print one markdown table (the same as ``lesa bench``).

    python benchmarks/run.py [--quick] [--only step ranking evaluation inference] [--out FILE.md]
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
