"""Open Images: seen, zero-shot (top-400 unseen) and generalised reports of checkpoints, K = 10, 20,
as zeroshot_experiments/OpenImage_evaluate_top_multi_label.py.

Usage: python experiments/openimages_evaluate.py --checkpoint RUN/model_ES.pt RUN/model.pt [--test H5] [--out DIR]
Same as `lesa evaluate openimages_evaluate ...`; settings in configs/openimages_evaluate.toml.
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", "openimages_evaluate", *sys.argv[1:]]))
