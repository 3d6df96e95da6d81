"""The original's TFRecord feature files, read directly (streaming) or converted to the HDF5 layout.

The extraction scripts of the original wrote one ``tf.train.Example`` per image, every value a
one-element bytes list:

    NUS-WIDE                     img_id, feature (196*512 float32), label_1k (1000 float32), label_81 (81 float32)
    Open Images train/validation img_id, feature, label (7186 int32)
    Open Images test             img_id, feature, seen_label (7186 int32), unseen_label (2594 int32)

Records come out as ``FeatureRecord(img_id, feature (196, 512) float32, {label name: (D,) int8})``
with the HDF5 layout's label names; the schema is recognised from the keys of the first record.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from lesa import layout
from lesa.datasets.h5 import FeatureWriter, partial_path
from lesa.shapes import FEATURE_SHAPE
from lesa.errors import ConfigError, TFRecordError
from lesa.tf_formats import iter_tfrecords, parse_example

FEATURE_BYTES = FEATURE_SHAPE[0] * FEATURE_SHAPE[1] * 4


@dataclass(frozen=True)
class Schema:
    name: str
    dataset: str  # HDF5 ``dataset`` attribute
    labels: tuple  # ((tfrecord key, HDF5 label name, stored dtype), ...)

    @property
    def keys(self) -> set:
        return {"img_id", "feature", *(key for key, _, _ in self.labels)}


SCHEMAS = (
    Schema("nus_wide", "nus_wide", (("label_1k", "labels_1k", "<f4"), ("label_81", "labels_81", "<f4"))),
    Schema("openimages", "openimages", (("label", "labels", "<i4"),)),
    Schema("openimages_test", "openimages",
           (("seen_label", "seen_labels", "<i4"), ("unseen_label", "unseen_labels", "<i4"))),
)
DATASET_NAMES = {"nus-wide": "nus_wide", "nus_wide": "nus_wide", "openimages": "openimages"}


class FeatureRecord(NamedTuple):
    img_id: str
    feature: np.ndarray  # (196, 512) float32
    labels: dict  # {HDF5 label name: (D,) int8 in {-1, 0, 1}}


def detect_schema(keys, where: str = "record") -> Schema:
    keys = set(keys)
    if schema := next((s for s in SCHEMAS if s.keys == keys), None):
        return schema
    known = "; ".join(f"{s.name}: {', '.join(sorted(s.keys))}" for s in SCHEMAS)
    raise TFRecordError(f"{where}: keys {sorted(keys)} match none of the original's feature schemas ({known}); "
                        "this is not a feature file written by the original's extraction scripts")


def _single_bytes(example: dict, key: str, where: str) -> bytes:
    value = example[key]
    if not isinstance(value, list) or len(value) != 1:
        raise TFRecordError(f"{where}: {key!r} should be one bytes value, found {type(value).__name__} "
                            f"of length {len(value)}; not a feature file of the original")
    return value[0]


def decode_record(example: dict, schema: Schema, where: str) -> FeatureRecord:
    """One parsed Example of ``schema`` -> FeatureRecord (sizes and label values checked)."""
    try:
        img_id = _single_bytes(example, "img_id", where).decode("utf-8")
    except UnicodeDecodeError:
        raise TFRecordError(f"{where}: img_id is not UTF-8 text; the file is corrupted") from None
    raw = _single_bytes(example, "feature", where)
    if len(raw) != FEATURE_BYTES:
        raise TFRecordError(f"{where} ({img_id}): feature has {len(raw)} bytes, expected {FEATURE_BYTES} "
                            "(196x512 float32 VGG-19 conv5_4 regions); the file holds other features")
    feature = np.frombuffer(raw, dtype="<f4").reshape(FEATURE_SHAPE).astype(np.float32)
    labels = {}
    for key, h5_name, dtype in schema.labels:
        raw = _single_bytes(example, key, where)
        if len(raw) % 4:
            raise TFRecordError(f"{where} ({img_id}): {key} has {len(raw)} bytes, not whole {dtype[1:]} values")
        values = np.frombuffer(raw, dtype=dtype)
        if not np.isin(values, (-1, 0, 1)).all():
            raise TFRecordError(f"{where} ({img_id}): {key} holds values other than -1, 0, 1")
        labels[h5_name] = values.astype(np.int8)
    return FeatureRecord(img_id, feature, labels)


def iter_feature_records(paths, dataset: str | None = None, compression: str | None = None
                         ) -> Iterator[FeatureRecord]:
    """Stream FeatureRecords from one or more TFRecord files (in the given order), all of the first
    record's schema and label widths; ``dataset`` ("nus-wide" or "openimages") insists on one."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    wanted, schema, dims = _dataset_name(dataset), None, {}
    for path in paths:
        for index, record in enumerate(iter_tfrecords(path, compression=compression)):
            where = f"{path}: record {index}"
            example = parse_example(record, where)
            if schema is None:
                schema = detect_schema(example.keys(), where)
                if wanted and schema.dataset != wanted:
                    raise TFRecordError(f"{where}: the file is a {schema.name} feature file, not {dataset}; "
                                        "pass the matching --dataset")
            elif set(example) != schema.keys:
                raise TFRecordError(f"{where}: keys {sorted(example)} differ from the first record's "
                                    f"{sorted(schema.keys)}; files of different schemas cannot be mixed")
            item = decode_record(example, schema, where)
            for name, values in item.labels.items():
                if dims.setdefault(name, values.size) != values.size:
                    raise TFRecordError(f"{where} ({item.img_id}): {name} has {values.size} columns, earlier "
                                        f"records {dims[name]}; the files do not belong together")
            yield item


def iter_feature_batches(paths, batch_size: int, dataset: str | None = None, compression: str | None = None
                         ) -> Iterator[tuple[list, np.ndarray, dict]]:
    """Batches of ``(img_ids, features (B, 196, 512) float32, {label name: (B, D) int8})``, streaming."""
    records = iter_feature_records(paths, dataset, compression)
    while batch := list(itertools.islice(records, batch_size)):
        yield _stack(batch)


def _stack(batch: list[FeatureRecord]) -> tuple[list, np.ndarray, dict]:
    return ([r.img_id for r in batch], np.stack([r.feature for r in batch]),
            {name: np.stack([r.labels[name] for r in batch]) for name in batch[0].labels})


def _dataset_name(dataset: str | None) -> str | None:
    if dataset is not None and dataset.lower() not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {dataset!r}; use nus-wide or openimages")
    return None if dataset is None else DATASET_NAMES[dataset.lower()]


IMG_ID_STYLES = ("original", "relative")


def relative_img_id(img_id: str) -> str:
    """original: NUS-WIDE ids were stored as ``./data/NUS_WIDE/Flickr/<concept>/<file>.jpg``; the
    relative form (``<concept>/<file>.jpg``) is what ``lesa extract`` stores. Other ids unchanged."""
    return img_id.replace("\\", "/").rsplit("Flickr/", 1)[-1]


def split_from_filename(path) -> str | None:
    """The split an original feature file holds, from its name (NUS_WIDE_Train_..., train_feature_...)."""
    name = Path(path).name
    match = re.match(r"NUS_WIDE_([A-Za-z]+)_", name) or re.match(r"(?:OI_seen_unseen_)?(train|validation|test)_feature", name)
    return match.group(1) if match else None


@dataclass
class ConvertSummary:
    path: Path
    n_records: int
    n_skipped: int  # already in the file of a resumed conversion
    schema: str
    dataset: str  # nus_wide or openimages
    split: str
    label_dims: dict


def convert_tfrecords(inputs: Sequence, out=None, dataset: str | None = None, split: str | None = None,
                      dtype: str = "float32", compression: str | None = None, batch_size: int = 256,
                      resume: bool = False, overwrite: bool = False, progress: bool = True,
                      img_ids: str = "original", data_dir=None) -> ConvertSummary:
    """Stream the original's TFRecord feature files into one HDF5 split file ``out`` (default
    ``features/<dataset>_<split>.h5`` in ``data_dir``). ``split``: if not given, test for Open Images
    test records, else from the first input's name. A bad input record stops with ``TFRecordError``
    after every record before it was written to ``OUT.partial`` (``resume=True`` continues it).
    ``img_ids``: "original" (byte for byte) or "relative" (NUS-WIDE ids as ``lesa extract`` stores them)."""
    from tqdm import tqdm

    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ConfigError("no TFRecord input files given")
    if img_ids not in IMG_ID_STYLES:
        raise ConfigError(f"unknown img_ids style {img_ids!r}; use one of {', '.join(IMG_ID_STYLES)}")
    rename = relative_img_id if img_ids == "relative" else (lambda i: i)

    records = iter_feature_records(inputs, dataset, compression)
    first = next(records, None)  # (checks the dataset name before any file is read)
    if first is None:
        raise TFRecordError(f"{', '.join(map(str, inputs))}: no records; nothing to convert")
    label_dims = {name: values.size for name, values in first.labels.items()}
    schema = next(s for s in SCHEMAS if {name for _, name, _ in s.labels} == set(first.labels))
    # Open Images test records carry seen and unseen labels
    split = split or ("test" if schema.name == "openimages_test" else split_from_filename(inputs[0]))
    if out is None:
        if not split:
            raise ConfigError(f"cannot tell which split {inputs[0].name} holds (its records and its name do "
                              "not say); pass --split NAME (e.g. Train, Test, train, validation, test) to "
                              "write it to the data folder's features/, or give the output file OUT.h5 "
                              "after the inputs")
        out = layout.resolve(layout.features_file(schema.dataset, split), data_dir)
    split = split or "unknown"
    attrs = {"source": "tfrecord", "source_files": "\n".join(p.name for p in inputs),
             "backbone": "vgg19_conv54", "img_id_style": img_ids}
    writer = FeatureWriter(out, schema.dataset, split, label_dims, dtype=dtype, attrs=attrs,
                           resume=resume, overwrite=overwrite)
    done = writer.done_ids if resume else []
    n_seen = 0
    batch: list[FeatureRecord] = []

    def flush():
        if batch:
            writer.append(*_stack(batch))
            batch.clear()

    bar = tqdm(desc=f"convert {Path(out).name}", unit="rec", disable=not progress)
    try:
        for record in itertools.chain([first], records):
            record = record._replace(img_id=rename(record.img_id))
            if n_seen < len(done):
                if record.img_id != done[n_seen]:
                    raise TFRecordError(f"{partial_path(out)} (resume): record {n_seen} is {record.img_id!r} in "
                                        f"the input but {done[n_seen]!r} in the file; convert without --resume")
            else:
                batch.append(record)
            n_seen += 1
            bar.update()
            if len(batch) >= batch_size:
                flush()
        if n_seen < len(done):
            raise TFRecordError(f"{partial_path(out)} (resume): holds {len(done)} records but the inputs only "
                                f"{n_seen}; convert without --resume")
        flush()
        writer.finish()
    except TFRecordError:
        flush()  # keep every good record read before the failure
        raise
    finally:
        bar.close()
        writer.close()
    return ConvertSummary(Path(out), n_seen - len(done), len(done), schema.name, schema.dataset, split, label_dims)
