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
