"""One exception hierarchy for every error a user can cause.

Catch ``LesaError`` to handle them all; the subclasses say which kind of input was wrong.
Messages name the file and, where there is one, the record or tensor.
"""


class LesaError(Exception):
    """Base class of every error caused by a user's input, files or settings."""


class ConfigError(LesaError, ValueError):
    """A configuration value, flag or combination of them is invalid."""


class ShapeError(LesaError, ValueError):
    """An array has a shape that does not fit (features not 196x512, labels vs vectors, ...)."""


class FormatError(LesaError):
    """A file is not in the format it claims to be, or is corrupted/truncated."""


class CheckpointError(FormatError):
    """A checkpoint (TF1 V1/V2 or native .pt) cannot be read or does not fit the model."""


class TFRecordError(FormatError):
    """A TFRecord file or a tf.train.Example record is corrupted or truncated."""


class DataError(FormatError):
    """A dataset file (HDF5 features, label lists, CSV, pickles, GloVe text) is invalid."""


class ImageError(LesaError):
    """An image cannot be decoded (truncated, not an image, unsupported)."""


class TrainingError(LesaError):
    """Training cannot continue (non-finite loss, incompatible resume state)."""
