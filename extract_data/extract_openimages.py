"""Extract Open Images 2018_04 VGG-19 conv5_4 features into HDF5 (replaces the original's
extract_images_VGG_feature_2_TFRecord.py (train/validation) and
extract_test_seen_unseen_images_VGG_feature_2_TFRecord.py (test: seen and unseen labels)).

    python extract_data/extract_openimages.py --root data/OpenImages/2018_04 --split train \
        --images-dir image_data/train --weights model/vgg_19/vgg_19.ckpt --out features/oi_train.h5

Same as `lesa extract openimages ...`; see `--help` for every option.
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", "openimages", *sys.argv[1:]]))
