"""The data folder: one layout that every command reads and writes (``--data-dir``, default ``data``).

    data/
      NUS_WIDE/                    NUS-WIDE metadata, as its zip files unpack or as the original arranged it
        Flickr/<concept>/<file>.jpg   the images
      OpenImages/2018_04/          label lists and human-label CSVs (the original repository + Google)
      OpenImages/image_data/<split>/<ImageID>.jpg   the images (what `lesa download openimages` writes)
      wiki_contexts/               label-vector pickles (the original repository's wiki_contexts/)
      TFRecords/                   the original's feature files, if you have them
      features/                    HDF5 feature files: written by `lesa extract`, `lesa convert-tfrecord`
                                   and `lesa synth`, read by the configurations

A relative path in a configuration, a ``--set data.KEY=`` override or a path option of ``lesa
train`` / ``lesa evaluate`` is taken inside the data folder; an absolute path is used as it is.
"""
from __future__ import annotations

import os
from pathlib import Path

from lesa.errors import DataError

DATA_DIR = "data"  # relative to the current folder
NUS_WIDE = "NUS_WIDE"
NUS_WIDE_IMAGES = "NUS_WIDE/Flickr"
OPENIMAGES = "OpenImages/2018_04"
OPENIMAGES_IMAGES = "OpenImages/image_data"  # one folder per split below it
FEATURES = "features"
LABEL_VECTORS = {
    "nus_wide": "wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300",
    "openimages": "wiki_contexts/OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl",
}
VGG_WEIGHTS = "model/vgg_19.ckpt"  # relative to the current folder (the project's model/ folder)

# NUS-WIDE metadata files: where each one sits in the folder as its zip files unpack (first) and,
# where it differs, as the original's instructions arranged them (second).
NUS_WIDE_FILES = {
    "concepts": ("ConceptsList/Concepts81.txt", "Concepts81.txt"),
    "all_labels": ("Groundtruth/AllLabels", "AllLabels"),
    "tag_list": ("NUS_WID_Tags/TagList1k.txt",),
    "all_tags": ("NUS_WID_Tags/AllTags1k.txt",),
    "image_list": ("ImageList/Imagelist.txt",),
    "split_list": ("ImageList/{split}Imagelist.txt",),
}
NUS_WIDE_DOWNLOAD = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html"


def features_file(dataset: str, split: str) -> str:
    """Where a split's HDF5 features live in the data folder: ``features/NUS_WIDE_Train.h5``,
    ``features/OpenImages_validation.h5``, ..."""
    prefix = {"nus_wide": "NUS_WIDE", "openimages": "OpenImages"}[dataset]
    return f"{FEATURES}/{prefix}_{split}.h5"


def data_dir(value: str | os.PathLike | None = None) -> Path:
    """The data folder, absolute (``value`` or ``data`` in the current folder)."""
    return Path(value or DATA_DIR).expanduser().absolute()


def resolve(path: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """``path`` inside the data folder ``folder`` (absolute paths stay as they are)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else data_dir(folder) / path


def missing_hint(path: Path, folder: str | os.PathLike | None = None) -> str:
    """What to say about a data path that does not exist: where relative paths are taken, and the
    file of that name in the current folder, if there is one (a path meant relative to it)."""
    hint = f"relative paths are taken in the data folder {data_dir(folder)} (set it with --data-dir)"
    try:
        rel = path.relative_to(data_dir(folder))
    except ValueError:
        return hint
    if Path(rel).exists():
        hint += f"; ./{rel} exists in the current folder: pass --data-dir . or an absolute path"
    return hint


def nus_wide_file(root: str | os.PathLike, key: str, split: str = "") -> Path:
    """A NUS-WIDE metadata file (``NUS_WIDE_FILES`` key) in either layout; ``DataError`` lists every
    place looked."""
    root = Path(root)
    places = [root / rel.format(split=split) for rel in NUS_WIDE_FILES[key]]
    for place in places:
        if place.exists():
            return place
    raise DataError(f"NUS-WIDE {places[0].name} not found; looked for {' and '.join(map(str, places))}. "
                    f"Unzip NUS-WIDE's metadata ({NUS_WIDE_DOWNLOAD}) into {root}, or point --root "
                    "(or data.nus_wide) at the folder that holds it")
