"""TF1 file formats read without TensorFlow: checkpoints (V1 and V2), TFRecords, ``tf.train.Example``.
The writers used by the tests are in tests/tf_writers.py."""
from lesa.tf_formats.checkpoint import TensorInfo, list_tf_checkpoint, read_tf_checkpoint  # noqa: F401
from lesa.tf_formats.example import parse_example  # noqa: F401
from lesa.tf_formats.tfrecord import iter_tfrecords  # noqa: F401
