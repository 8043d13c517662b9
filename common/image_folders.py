"""A user's own folder of images as a data set: torchvision's ImageFolder layout, checked up front.

    ROOT/train/CLASS/*.jpg|png|...    the training split, one folder a class
    ROOT/val/CLASS/*                  the test split, with the same class folders

(ImageNet's own tree is one such folder.) Classes are the folder names in sorted
order, as ImageFolder numbers them, so a split missing a class would shift every
label after it: that is refused, as are a split without images and a class folder
without any, each in one line. Images are read one at a time (nothing is held in
memory); an unreadable file is a one-line error naming it, in a loader process too.

Normalisation is given, or measured once on a seeded sample of the training
split (``MEASURED_IMAGES``), seen as the evaluation transform shows it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from PIL import Image
from torchvision import datasets, transforms

from common.image_files import read_image

log = logging.getLogger("common.data")

SPLITS = ("train", "val")
CROP_FRACTION = 0.875
"""Evaluation resizes the short side to size / 0.875 and crops the centre (224 from 256, as torchvision and timm)."""
MEASURED_IMAGES = 1000
"""Training images the normalisation is measured on when it is not given (all of them if fewer)."""


def check_layout(name: str, root: Path) -> list[str]:
    """The class names (train's folders, sorted); a missing split or a class one split lacks is one line."""
    layout = f"expected {root}/train/CLASS/* and {root}/val/CLASS/* (torchvision's ImageFolder layout)"
    missing = [str(root / split) for split in SPLITS if not (root / split).is_dir()]
    if missing:
        raise FileNotFoundError(f"{name}: no folder {' or '.join(missing)}; {layout}")
    classes = {split: sorted(p.name for p in (root / split).iterdir() if p.is_dir()) for split in SPLITS}
    if not classes["train"]:
        raise FileNotFoundError(f"{name}: {root / 'train'} holds no class folders; {layout}")
    for split, other in (SPLITS, SPLITS[::-1]):
        lacking = sorted(set(classes[split]) - set(classes[other]))
        if lacking:
            raise ValueError(f"{name}: class {', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''} of "
                             f"{root / split} has no folder in {root / other}; both splits need the same classes")
    return classes["train"]


def geometry(size: int, augment: bool) -> tuple[list, list]:
    """(train, evaluation) resizing and cropping to ``size`` x ``size``; ``augment``: random crops and flips."""
    evaluation = [transforms.Resize(round(size / CROP_FRACTION)), transforms.CenterCrop(size)]
    train = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] if augment else evaluation
    return train, evaluation


def open_split(name: str, folder: Path, transform) -> datasets.ImageFolder:
    try:
        return datasets.ImageFolder(folder, transform, loader=read_image)
    except FileNotFoundError as e:  # a class folder without a single image file
        raise FileNotFoundError(f"{name}: {folder}: {e}") from None


def measure_normalisation(split: datasets.ImageFolder, evaluation: list, seed: int = 0
                          ) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-channel (mean, std) of the pixels of up to ``MEASURED_IMAGES`` training images (a seeded sample),
    and how many were read."""
    count = min(len(split), MEASURED_IMAGES)
    chosen = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    to_tensor = transforms.Compose(evaluation + [transforms.ToTensor()])
    sums = torch.zeros(2, 3, dtype=torch.float64)
    pixels = 0
    for index in chosen.tolist():
        image = to_tensor(read_image(split.samples[index][0])).double().flatten(1)
        sums += torch.stack([image.sum(1), image.square().sum(1)])
        pixels += image.shape[1]
    mean = sums[0] / pixels
    std = (sums[1] / pixels - mean.square()).clamp_min(0).sqrt()
    log.info("%s: normalisation measured on %d of %d training images: mean %s, std %s (give --mean and --std "
             "to skip this)", split.root, count, len(split), _listed(mean), _listed(std))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std), count


def _listed(values) -> str:
    return ",".join(f"{float(v):.4f}" for v in values)


def check_normalisation(mean, std) -> None:
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in (*mean, *std)) or min(std) <= 0:
        raise ValueError(f"--mean and --std need 3 numbers each (R,G,B), every std above 0; got {mean} and {std}")
