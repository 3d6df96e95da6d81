"""Open Images: 7186 seen labels, zero-shot test on the top-400 unseen, as multilabel_experiments/OpenImage_rank_Visual_Word_Attention.py.

Usage: python experiments/openimages_train.py [--data-dir DIR] [--out DIR] [--set k=v ...]   (continue a run: lesa train RUN_DIR --resume)
Same as `lesa train openimages_train ...`; settings in configs/openimages_train.toml.
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "openimages_train", *sys.argv[1:]]))
