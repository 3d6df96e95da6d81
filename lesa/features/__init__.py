"""The original's image features: ``decode_jpeg`` (TF-exact) -> ``vgg_preprocess`` (TF-slim) ->
``VGG19Conv54`` (196, 512); ``extract``: whole datasets -> HDF5."""
from lesa.features.jpeg import decode_jpeg  # noqa: F401
from lesa.features.preprocess import vgg_preprocess, vgg_preprocess_batch  # noqa: F401
from lesa.features.vgg import VGG19Conv54  # noqa: F401
