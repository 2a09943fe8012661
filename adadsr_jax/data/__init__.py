"""Data: MATLAB-compatible bicubic, image I/O, image-pair sources and the training patch pipeline.

See docs/data.md. Importing this package is cheap: tensorflow_datasets is imported only by ``tfds_source``.
"""

from adadsr_jax.data.bicubic import downscale, imresize, upscale
from adadsr_jax.data.images import ImageError, load_image, save_png
from adadsr_jax.data.pipeline import TrainBatches
from adadsr_jax.data.sources import ImagePair, demo_source, folder_source, make_source, tfds_source

__all__ = [
    "ImageError",
    "ImagePair",
    "TrainBatches",
    "demo_source",
    "downscale",
    "folder_source",
    "imresize",
    "load_image",
    "make_source",
    "save_png",
    "tfds_source",
    "upscale",
]
