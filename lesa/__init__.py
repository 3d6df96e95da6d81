"""lesa: a faithful PyTorch port of LESA (Huynh & Elhamifar, CVPR 2020).

The public names below are fixed: other code, the README and outside checks rely on them.
"""
__version__ = "0.1.0"

from lesa.errors import (  # noqa: F401
    CheckpointError,
    ConfigError,
    DataError,
    FormatError,
    ImageError,
    LesaError,
    ShapeError,
    TFRecordError,
    TrainingError,
)

from lesa import metrics  # noqa: E402,F401
from lesa.model import LESA, LESAConfig, LESAOutput  # noqa: E402,F401
from lesa.optim import AdaptiveLR, TFRMSprop  # noqa: E402,F401
from lesa.tf_weights import load_tf_checkpoint  # noqa: E402,F401


def read_tf_checkpoint(path, *args, **kwargs):
    """Read a TF1 checkpoint (V2 bundle or V1 file) into {name: array}, without TensorFlow."""
    from lesa.tf_formats import read_tf_checkpoint as _read

    return _read(path, *args, **kwargs)
