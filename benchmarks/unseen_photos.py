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

from adadsr_jax.data.images import save_png

PHOTOS = ("camera", "coins", "hubble_deep_field", "immunohistochemistry", "retina")
MAX_SIDE = 480


def centre_crop(image: np.ndarray, side: int = MAX_SIDE) -> np.ndarray:
    """The centred square of side min(side, H, W) of [H, W, C] or [H, W]."""
    h, w = image.shape[:2]
    s = min(side, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[top : top + s, left : left + s]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] from a gray [H, W] or an RGB(A) [H, W, 3|4] photo."""
    image = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]
    return np.ascontiguousarray(image.astype(np.uint8))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write <photo>.png into (created; those five replaced)")
    args = p.parse_args(argv)
    from skimage import data  # slow to import; only this script needs it

    for name in PHOTOS:
        path = args.out / f"{name}.png"
        image = as_rgb(centre_crop(getattr(data, name)()))
        save_png(path, image)
        print(f"{path}: {image.shape[0]} x {image.shape[1]}")


if __name__ == "__main__":
    main()
