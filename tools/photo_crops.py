"""Write a folder of real photographs to try ``vdm-fast demo --data DIR`` on, with nothing to download.

The crops come from the two sample photos scikit-learn ships (``china.jpg``, ``flower.jpg``,
640x427 RGB): ``--count`` crops per photo, each a random square of 48 to 160 pixels at a random
place, saved as JPEG (odd indices) or PNG (even), one subfolder per photo, so the demo sees two
classes, two formats and images of many sizes to centre-crop and resize.

    python tools/photo_crops.py /tmp/photos --count 200
    vdm-fast demo --data /tmp/photos --size 8 --out /tmp/photos_run
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images


def write_crops(folder: str, count: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    photos = load_sample_images()
    written = 0
    for path, image in zip(photos.filenames, photos.images):
        name = os.path.splitext(os.path.basename(path))[0]
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        h, w = image.shape[:2]
        for i in range(count):
            side = int(rng.integers(48, 161))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = Image.fromarray(image[top:top + side, left:left + side])
            crop.save(os.path.join(folder, name, f"{i:04d}.{'jpg' if i % 2 else 'png'}"))
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=200, help="crops per photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {write_crops(args.folder, args.count, args.seed)} images to {args.folder}")


if __name__ == "__main__":
    main()
