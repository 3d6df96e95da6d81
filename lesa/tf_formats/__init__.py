"""TF1 file formats read (and, for tests, written) without TensorFlow.

- ``read_tf_checkpoint`` / ``list_tf_checkpoint``: V2 bundles (``prefix.index`` + ``prefix.data-*``)
  and V1 single-file tables (TF-slim model zoo ``vgg_19.ckpt``), checksums verified.
- ``iter_tfrecords`` / ``write_tfrecords``: TFRecord framing, plain/ZLIB/GZIP, CRCs verified.
- ``parse_example`` / ``encode_example``: ``tf.train.Example`` protos.
- ``write_tf_checkpoint`` / ``write_tf_checkpoint_v1``: small checkpoints for tests and synthetic data.
"""
from lesa.tf_formats.checkpoint import TensorInfo, list_tf_checkpoint, read_tf_checkpoint  # noqa: F401
from lesa.tf_formats.example import encode_example, parse_example  # noqa: F401,E402
from lesa.tf_formats.tfrecord import iter_tfrecords, write_tfrecords  # noqa: F401,E402
from lesa.tf_formats.checkpoint_writer import write_tf_checkpoint, write_tf_checkpoint_v1  # noqa: F401,E402
