"""NUS-WIDE multi-label on the 81 concepts, as multilabel_experiments/NUS_WIDE_rank_Visual_Word_Attention.py.

Usage: python experiments/nus_wide_multilabel.py [--data-dir DIR] [--train H5] [--test H5] [--out DIR] [--resume] [--set k=v ...]
Same as `lesa train nus_wide_multilabel ...`; settings in configs/nus_wide_multilabel.toml.
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "nus_wide_multilabel", *sys.argv[1:]]))
