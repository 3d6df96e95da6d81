"""Evaluate the original's released NUS-WIDE zero-shot checkpoint and compare with its published results.

Usage:
  python experiments/evaluate_released_nus_wide.py \
      --checkpoint results/release_zs_NUS_WIDE_log_GPU_7_1587185916d2570488/model.ckpt \
      --test data/features/NUS_WIDE_Test.h5        # or the original's NUS_WIDE_Test_full_feature_ZLIB.tfrecords
      [--data-dir DIR] [--label-vectors PKL] [--out results/released_nus_wide]

Writes F1_f_81_test.csv (zero-shot, 81 unseen concepts), F1_f_1k_test.csv (generalised, 81 + 925
labels; the original left its F1 columns empty) and summary_f.json, then prints the published
figures next to the measured ones. A TFRecord test file is converted to HDF5 next to it first.
"""
import argparse
import json
import sys
from pathlib import Path

from lesa.cli import main
from lesa.released import compare_with_published


def as_hdf5(test: str) -> str:
    if not test.endswith(".tfrecords"):
        return test
    h5 = str(Path(test).with_suffix(".h5"))
    if not Path(h5).exists():
        code = main(["convert-tfrecord", "--dataset", "nus-wide", "--img-ids", "relative", test, h5])
        if code:
            sys.exit(code)
    return h5


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the released model.ckpt prefix")
    parser.add_argument("--test", required=True, help="NUS-WIDE test features (.h5, or the original's .tfrecords)")
    parser.add_argument("--out", default="results/released_nus_wide")
    parser.add_argument("--data-dir", help="folder holding the label files named in configs/nus_wide_zero_shot.toml")
    parser.add_argument("--label-vectors", help="NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300 pickle")
    parser.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE")
    args = parser.parse_args()
    argv = ["evaluate", "nus_wide_zero_shot", "--checkpoint", args.checkpoint, "--tag", "f",
            "--test", as_hdf5(args.test), "--out", args.out]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.label_vectors:
        argv += ["--label-vectors", args.label_vectors]
    for item in args.set:
        argv += ["--set", item]
    code = main(argv)
    if code == 0:
        summary = json.loads((Path(args.out) / "summary_f.json").read_text())
        print("\npublished results of the released checkpoint vs this evaluation:")
        print(compare_with_published(summary))
    sys.exit(code)
