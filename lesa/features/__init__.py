"""Image features of the original: TF-exact JPEG decode, TF-slim VGG preprocessing, VGG-19 conv5_4.

    image bytes --decode_jpeg--> uint8 (H, W, 3) --vgg_preprocess--> float32 (3, 224, 224)
                --VGG19Conv54--> features (196, 512)       (extract.py: whole datasets -> HDF5)
"""
from lesa.features.jpeg import decode_jpeg  # noqa: F401
from lesa.features.preprocess import vgg_preprocess, vgg_preprocess_batch  # noqa: F401
from lesa.features.vgg import VGG19Conv54  # noqa: F401
