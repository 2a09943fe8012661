"""Write the five photos the README's demo evaluation uses: real photos the demo never trains on.

Centre crops of at most 480 x 480 of scikit-image's bundled `camera`, `coins`, `hubble_deep_field`,
`immunohistochemistry` and `retina` (no download), as RGB PNGs in OUT (gray photos with R = G = B).
`evaluate.py` finds OUT as an HR-only set named after the folder and generates the LR itself:

  python benchmarks/unseen_photos.py /tmp/photos/photos
  python evaluate.py --workdir runs/demo --datasets demo,photos --data-root /tmp/photos ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from adadsr_jax.data.images import load_image, save_png
from adadsr_jax.data.sources import photo_path

PHOTOS = {  # output name: the file in scikit-image's data folder
    "camera": "camera.png",
    "coins": "coins.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "retina": "retina.jpg",
}
MAX_SIDE = 480


def centre_crop(image: np.ndarray, side: int = MAX_SIDE) -> np.ndarray:
    """The centred square of side min(side, H, W) of [H, W, C]."""
    h, w = image.shape[:2]
    s = min(side, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[top : top + s, left : left + s]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write <photo>.png into (created; those five replaced)")
    args = p.parse_args(argv)
    for name, filename in PHOTOS.items():
        path = args.out / f"{name}.png"
        image = centre_crop(load_image(photo_path(f"skimage:{filename}")))  # gray -> R = G = B
        save_png(path, image)
        print(f"{path}: {image.shape[0]} x {image.shape[1]}")


if __name__ == "__main__":
    main()
