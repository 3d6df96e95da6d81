"""Extract Open Images 2018_04 VGG-19 conv5_4 features into HDF5 (replaces the original's
extract_images_VGG_feature_2_TFRecord.py (train/validation) and
extract_test_seen_unseen_images_VGG_feature_2_TFRecord.py (test: seen and unseen labels)).

    python extract_data/extract_openimages.py --split train   # then validation, test

reads the label files in data/OpenImages/2018_04 and the images in
data/OpenImages/image_data/<split> (where download_imgs/download_openimages.py puts them), loads
the VGG-19 weights from model/vgg_19.ckpt and writes data/features/OpenImages_<split>.h5, where
`lesa train openimages_train` looks. --data-dir, --root, --images-dir, --weights and --out change
those places.

Same as `lesa extract openimages ...`; see `--help` for every option.
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", "openimages", *sys.argv[1:]]))
