"""NUS-WIDE zero-shot (925 seen tags -> 81 unseen concepts), as zeroshot_experiments/NUS_WIDE_zs_rank_Visual_Word_Attention.py.

Usage: python experiments/nus_wide_zero_shot.py [--data-dir DIR] [--out DIR] [--set k=v ...]   (continue a run: lesa train RUN_DIR --resume)
Same as `lesa train nus_wide_zero_shot ...`; settings in configs/nus_wide_zero_shot.toml.
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "nus_wide_zero_shot", *sys.argv[1:]]))
