"""TF1 file formats read without TensorFlow (the writers used by the tests are in tests/tf_writers.py).

- ``read_tf_checkpoint`` / ``list_tf_checkpoint``: V2 bundles (``prefix.index`` + ``prefix.data-*``)
  and V1 single-file tables (TF-slim model zoo ``vgg_19.ckpt``), checksums verified.
- ``iter_tfrecords``: TFRecord framing, plain/ZLIB/GZIP, CRCs verified.
- ``parse_example``: ``tf.train.Example`` protos.
"""
from lesa.tf_formats.checkpoint import TensorInfo, list_tf_checkpoint, read_tf_checkpoint  # noqa: F401
from lesa.tf_formats.example import parse_example  # noqa: F401
from lesa.tf_formats.tfrecord import iter_tfrecords  # noqa: F401
