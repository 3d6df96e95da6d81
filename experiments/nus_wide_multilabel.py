"""NUS-WIDE multi-label on the 81 concepts, as multilabel_experiments/NUS_WIDE_rank_Visual_Word_Attention.py.

Usage: python experiments/nus_wide_multilabel.py [--data-dir DIR] [--out DIR] [--set k=v ...]   (continue a run: lesa train RUN_DIR --resume)
Same as `lesa train nus_wide_multilabel ...`; settings in configs/nus_wide_multilabel.toml.
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "nus_wide_multilabel", *sys.argv[1:]]))
