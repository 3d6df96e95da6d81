"""Extract NUS-WIDE VGG-19 conv5_4 features into HDF5 (replaces the original's
extract_full_NUS_WIDE_images_VGG_feature_2_TFRecord.py).

    python extract_data/extract_nus_wide.py --root data/NUS_WIDE --split Train \
        --weights model/vgg_19/vgg_19.ckpt --out features/nus_wide_Train.h5

Same as `lesa extract nus-wide ...`; see `--help` for every option.
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", "nus-wide", *sys.argv[1:]]))
