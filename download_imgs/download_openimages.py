#!/usr/bin/env python
"""Download an Open Images split as 256-pixel JPEGs: same as ``lesa download openimages``.

Example (the original's layout)::

    python download_imgs/download_openimages.py --split validation \
        --csv data/OpenImages/2017_11/validation/images.csv --out image_data/validation
"""
import sys

from lesa.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", "openimages", *sys.argv[1:]]))
