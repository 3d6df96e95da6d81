#!/usr/bin/env python
"""Download an Open Images split as 256-pixel JPEGs: same as ``lesa download openimages``.

    python download_imgs/download_openimages.py --split validation

looks the image list up under data/OpenImages (2017_11/<split>/images.csv or the 2018_04
*-images-with-rotation.csv; --csv names another) and writes data/OpenImages/image_data/<split>,
where extract_data/extract_openimages.py (`lesa extract openimages`) reads the images. --data-dir
and --out change those places.
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", "openimages", *sys.argv[1:]]))
