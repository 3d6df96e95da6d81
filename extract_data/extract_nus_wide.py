"""Extract NUS-WIDE VGG-19 conv5_4 features into HDF5 (replaces the original's
extract_full_NUS_WIDE_images_VGG_feature_2_TFRecord.py).

    python extract_data/extract_nus_wide.py --split Train     # then --split Test

reads data/NUS_WIDE (the metadata, as NUS-WIDE's zip files unpack or as the original arranged
it) and the images in data/NUS_WIDE/Flickr, loads the VGG-19 weights from model/vgg_19.ckpt and
writes data/features/NUS_WIDE_Train.h5, where `lesa train nus_wide_zero_shot` looks. --data-dir,
--root, --images-dir, --weights and --out change those places.

Same as `lesa extract nus-wide ...`; see `--help` for every option.
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", "nus-wide", *sys.argv[1:]]))
