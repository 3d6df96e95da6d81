"""Evaluate the original's released NUS-WIDE zero-shot checkpoint and compare with its published results.

    python experiments/evaluate_released_nus_wide.py [--checkpoint results/release_zs_NUS_WIDE_.../model.ckpt]
        [--data-dir DIR] [--test H5] [--out results/released_nus_wide]

Same as `lesa evaluate-released ...` (`--help` lists every option).
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate-released", *sys.argv[1:]]))
