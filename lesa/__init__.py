"""lesa: a faithful PyTorch port of LESA (Huynh & Elhamifar, CVPR 2020).

The public names below are fixed: other code, the README and outside checks rely on them.
Names that need torch are imported on first use, so ``lesa --help`` starts quickly.
"""
from __future__ import annotations

import importlib

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

# public name -> module that defines it
_LAZY = {
    "LESA": "lesa.model",
    "LESAConfig": "lesa.model",
    "LESAOutput": "lesa.model",
    "TFRMSprop": "lesa.optim",
    "AdaptiveLR": "lesa.optim",
    "load_tf_checkpoint": "lesa.tf_weights",
    "read_tf_checkpoint": "lesa.tf_formats",
    "metrics": "lesa.metrics",
}

__all__ = sorted(
    ["__version__", "LesaError", "ConfigError", "ShapeError", "FormatError", "CheckpointError",
     "TFRecordError", "DataError", "ImageError", "TrainingError", *_LAZY]
)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__ == f"lesa.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lesa' has no attribute {name!r}")


def __dir__():
    return __all__
