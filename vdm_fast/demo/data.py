"""The demo's data: scikit-learn's 8x8 handwritten digits (bundled with scikit-learn, no download),
or a folder of the user's images (``--data DIR``, ``load_folder``).

The digits hold 17 grey levels (0..16). They are mapped to 8-bit values k = round(v * 255/16)
and then to VDM's bin centres x = 2(k + 1/2)/256 - 1 (DESIGN.md §2), so the ELBO is a true
bound on -log P of the 8-bit image. A folder's images are 8-bit already.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

NUM_CLASSES = 10
SIDE = 8


def to_8bit(levels: torch.Tensor) -> torch.Tensor:
    """Digits' 0..16 grey levels to 8-bit values 0..255."""
    return torch.round(levels.double() * 255.0 / 16.0).long()


def to_model_space(k: torch.Tensor) -> torch.Tensor:
    """8-bit values to VDM bin centres in (-1, 1)."""
    return (2 * (k.double() + 0.5) / 256 - 1).float()


def from_model_space(x: torch.Tensor) -> torch.Tensor:
    """Model-space images back to 8-bit values (nearest bin centre)."""
    return torch.clamp(torch.round((x.double() + 1) * 128 - 0.5), 0, 255).long()


@dataclass
class Split:
    images: torch.Tensor  # (N, 1, 8, 8) float32 in model space
    labels: torch.Tensor  # (N,) int64
    pixels: torch.Tensor  # (N, 1, 8, 8) int64 8-bit values


@dataclass
class Dataset:
    """Both splits and what the model needs to know about the images."""

    train: Split
    held_out: Split
    classes: list[str]  # class names, label k = classes[k]; empty: unconditional
    description: str  # for the log: what the images are
    skipped: list[str] = field(default_factory=list)  # files that could not be decoded

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class DataError(ValueError):
    """A --data folder that gives nothing to train on (empty, unreadable, too few images)."""


def _split(pixels: torch.Tensor, labels: torch.Tensor, holdout_fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, held-out), shuffled with a fixed seed so every run evaluates the same images."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    pixels, labels = pixels[order], labels[order]
    n_test = min(max(int(round(len(labels) * holdout_fraction)), 1), len(labels) - 1)

    def split(sl):
        return Split(to_model_space(pixels[sl]), labels[sl], pixels[sl])

    return split(slice(n_test, None)), split(slice(0, n_test))


def load(holdout_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    levels = torch.as_tensor(digits.images).reshape(-1, 1, SIDE, SIDE)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    train, held_out = _split(to_8bit(levels), labels, holdout_fraction, seed)
    return Dataset(train, held_out, [str(d) for d in range(NUM_CLASSES)], "digits")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _image_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def _decode(path: str, size: int):
    """The image at ``path`` as an (size, size, 3) uint8 array: centre-cropped to a square (so shapes
    keep their proportions), then resized with area averaging (PIL's BOX filter: each output pixel
    the mean of the input pixels it covers, the right filter for shrinking). None if undecodable."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # palette, grey, alpha, CMYK: all to 8-bit RGB
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.resize((size, size), Image.Resampling.BOX, box=(left, top, left + side, top + side))
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError):  # not an image, truncated, corrupt
        return None


def load_folder(folder: str, size: int, holdout_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A folder of PNG/JPEG images, any size, resized to ``size`` x ``size``.

    Class labels come from subfolder names when there are subfolders holding images (one class per
    such subfolder, in sorted order; images directly in the folder are then ignored, and counted);
    otherwise the folder's own images are one unconditional set. Images are grayscale (one channel)
    when every image is grey (R = G = B everywhere after decoding), else RGB. Files that cannot be
    decoded are skipped and listed. DataError when nothing is left to train on."""
    import numpy as np

    subfolders = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    labelled = [(d, _image_files(os.path.join(folder, d))) for d in subfolders]
    labelled = [(d, files) for d, files in labelled if files]
    loose = _image_files(folder)
    if labelled:
        classes = [d for d, _ in labelled]
        wanted = [(f, k) for k, (_, files) in enumerate(labelled) for f in files]
    else:
        classes, wanted = [], [(f, 0) for f in loose]
    if not wanted:
        raise DataError(f"--data {folder}: no PNG or JPEG images in it or in its subfolders")
    images, labels, skipped = [], [], []
    for path, label in wanted:
        arr = _decode(path, size)
        if arr is None:
            skipped.append(path)
        else:
            images.append(arr)
            labels.append(label)
    if len(images) < 2:
        raise DataError(f"--data {folder}: {len(images)} of {len(wanted)} image files could be decoded; "
                        "training and a held-out evaluation need at least 2")
    stack = np.stack(images)  # (N, S, S, 3)
    grey = bool((stack[..., 0] == stack[..., 1]).all() and (stack[..., 0] == stack[..., 2]).all())
    pixels = torch.from_numpy(stack[..., :1] if grey else stack).permute(0, 3, 1, 2).long().contiguous()
    train, held_out = _split(pixels, torch.tensor(labels, dtype=torch.long), holdout_fraction, seed)
    kind = "grayscale" if grey else "RGB"
    what = f"{len(classes)} classes from subfolders" if classes else "unconditional"
    extra = f"; {len(loose)} image(s) directly in the folder ignored (classes come from subfolders)" \
        if classes and loose else ""
    return Dataset(train, held_out, classes, f"{kind} {size}x{size} images of {folder} ({what}){extra}", skipped)
