"""Data: MATLAB-compatible bicubic, image I/O, image-pair sources and the training patch pipeline.

See docs/data.md. Importing this package is cheap: each name is imported on first use (the pipeline
with jax and grain by ``TrainBatches``), tensorflow_datasets only by ``tfds_source``.
"""

from adadsr_jax.lazy_imports import lazy_exports

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

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "adadsr_jax.data.bicubic": ("downscale", "imresize", "upscale"),
        "adadsr_jax.data.images": ("ImageError", "load_image", "save_png"),
        "adadsr_jax.data.pipeline": ("TrainBatches",),
        "adadsr_jax.data.sources": (
            "ImagePair",
            "demo_source",
            "folder_source",
            "make_source",
            "tfds_source",
        ),
    },
)
