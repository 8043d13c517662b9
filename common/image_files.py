"""A folder of image files as a view source: each view a RandomResizedCrop box and a flip, drawn as a pure
function of (seed, epoch, index) and the image's size, rendered from the decoded file.

The box follows torchvision's ``RandomResizedCrop`` rule (area scale (0.08, 1), log-uniform aspect ratio
(3/4, 4/3), ten tries, then the centre crop clamped to the ratio), with the draws taken from the counter
hash of ``common.views`` instead of a running RNG, so the trainer's loader workers, a resumed run and a
teacher server that holds its own copy of the folder all draw the same box. The image's size comes from
its header, read without decoding the pixels.

Rendering is torchvision's own functional ops on PIL's decode (``resized_crop`` bilinear with antialias,
``hflip``), then ``ToTensor`` and ``Normalize``'s arithmetic on the whole batch at once: bit for bit what
``RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize`` give for the same box, and the same
code on both sides of the wire. PIL's decoder was measured against torchvision.io's on 300-500 px JPEGs at
quality 90 (docs/benchmarks.md): its decode + crop + resize is the faster of the two here, and PIL's
``draft`` (DCT-domain downscaling) only helps where a box is at least twice the view's side, which is rare
at ImageNet's sizes, so it is not used: every box is read from the full decode.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from common.views import Recipes, SplitRows, _below, counter_hash, normalise, uniform

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
TRIES = 10
CENTRE_FRACTION = 0.875
"""An unaugmented view is the centred square of this share of the short side (evaluation's 224 of 256)."""
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What PIL raises for a file that is not a readable image: one line naming the file."""
_FLIP_STREAM = 3
_BOX_STREAMS = 16  # four streams a try from here: area, ratio, row, column


def read_image(path: str) -> Image.Image:
    """An image file as RGB, as torchvision's ImageFolder loader reads it (grey, palette, CMYK and alpha
    converted); a file that is not a readable 8-bit image is one line naming it."""
    try:
        with Image.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                raise ValueError(f"a {image.mode} image (16 or 32 bits a pixel) would be clipped to 8 bits; "
                                 "convert it to 8-bit RGB or grey")
            if image.mode == "RGB":  # most JPEGs: decode in place, no copy (the same pixels convert would give)
                image.load()
                return image
            return image.convert("RGB")
    except _UNREADABLE as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def image_size(path: str) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding its pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            return height, width
    except _UNREADABLE as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def resized_crop_boxes(seed: int, epoch: int, indices: np.ndarray, heights: np.ndarray, widths: np.ndarray,
                       scale=SCALE, ratio=RATIO) -> tuple[np.ndarray, ...]:
    """(top, left, height, width) of each image's RandomResizedCrop box, int64 arrays."""
    n = len(indices)
    heights, widths = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    area = (heights * widths).astype(np.float64)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    box = [np.zeros(n, np.int64) for _ in range(4)]
    found = np.zeros(n, dtype=bool)
    for attempt in range(TRIES):
        streams = [_BOX_STREAMS + 4 * attempt + s for s in range(4)]
        target = area * (scale[0] + (scale[1] - scale[0]) * uniform(counter_hash(seed, epoch, indices, streams[0])))
        aspect = np.exp(log_low + (log_high - log_low) * uniform(counter_hash(seed, epoch, indices, streams[1])))
        w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
        h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
        fits = ~found & (w > 0) & (w <= widths) & (h > 0) & (h <= heights)
        if fits.any():
            top = _below(counter_hash(seed, epoch, indices, streams[2]), np.maximum(heights - h + 1, 1)).numpy()
            left = _below(counter_hash(seed, epoch, indices, streams[3]), np.maximum(widths - w + 1, 1)).numpy()
            for part, value in zip(box, (top, left, h, w)):
                part[fits] = value[fits]
            found |= fits
        if found.all():
            break
    rest = ~found
    if rest.any():
        top, left, h, w = centre_boxes(heights[rest], widths[rest], ratio)
        for part, value in zip(box, (top, left, h, w)):
            part[rest] = value
    return tuple(box)


def centre_boxes(heights: np.ndarray, widths: np.ndarray, ratio=RATIO) -> tuple[np.ndarray, ...]:
    """torchvision's fallback: the whole image, cut to the nearer end of the ratio range, centred."""
    in_ratio = widths / heights
    w = np.where(in_ratio < ratio[0], widths, np.where(in_ratio > ratio[1], np.rint(heights * ratio[1]), widths))
    h = np.where(in_ratio < ratio[0], np.rint(widths / ratio[0]), heights)
    w, h = w.astype(np.int64), h.astype(np.int64)
    return (heights - h) // 2, (widths - w) // 2, h, w


@dataclass(frozen=True)
class ImageFiles(SplitRows):
    """A training split read from files (``root``/``paths``, in ImageFolder's order) at ``size`` px.

    ``augment``: RandomResizedCrop boxes (else the centred square of ``CENTRE_FRACTION`` of the short side);
    ``flip``: left-right flips at random. ``fingerprint`` comes from what the files hold (their content
    manifest), never their paths or times, so two hosts with the same files agree on it."""
    root: str
    paths: tuple[str, ...]
    labels: torch.Tensor
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = True
    flip: bool = True
    origin: torch.Tensor | None = None
    split_size: int | None = None
    source_fingerprint: str | None = None
    manifest_cache: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, row: int) -> str:
        return f"{self.root}/{self.paths[row]}"

    def subset(self, indices) -> "ImageFiles":
        indices = torch.as_tensor(indices, dtype=torch.long)
        origin = indices if self.origin is None else self.origin[indices]
        return replace(self, paths=tuple(self.paths[i] for i in indices.tolist()), labels=self.labels[indices],
                       origin=origin, split_size=self.split_size or len(self))

    def unaugmented(self) -> "ImageFiles":
        return replace(self, augment=False, flip=False)

    @property
    def manifest(self):
        """The whole split's content manifest (``common.manifest.Manifest``): every file's relative path, size
        and sha256, read once, then from a cache beside the folder (or the user's) while the files' stats
        stay the same."""
        if getattr(self, "_manifest", None) is None:
            from common.manifest import Manifest

            manifest = Manifest.build(self.root, cache=self.manifest_cache or True)
            if len(manifest) != (self.split_size or len(self)):
                raise ValueError(f"{self.root}: {len(manifest):,} image files now, {self.split_size or len(self):,} "
                                 "when the data set was opened; start again")
            object.__setattr__(self, "_manifest", manifest)
        return self._manifest

    @property
    def fingerprint(self) -> str:
        """sha256 of the split's content manifest and of how its views are made (``view_settings``)."""
        if self.source_fingerprint is None:
            digest = hashlib.sha256(json.dumps({"files": self.manifest.fingerprint, **self.view_settings()},
                                               sort_keys=True).encode())
            object.__setattr__(self, "source_fingerprint", digest.hexdigest())
        return self.source_fingerprint

    def view_settings(self) -> dict:
        """How a recipe becomes an image, beside the files themselves: two sides that differ here render the
        same box differently."""
        return {"views": "resized-crop", "size": self.size, "augment": self.augment, "flip": self.flip,
                "scale": list(SCALE), "ratio": [round(r, 6) for r in RATIO], "mean": list(self.mean),
                "std": list(self.std)}

    def _boxes(self, seed: int, epoch: int, rows: torch.Tensor, sizes: np.ndarray) -> Recipes:
        """The recipes of ``rows`` (this subset's) given their images' (height, width); drawn by the sample's
        place in the whole split, so a subset draws what the whole split would."""
        samples = (rows if self.origin is None else self.origin[rows]).cpu().numpy()
        heights, widths = sizes[:, 0], sizes[:, 1]
        if self.augment:
            box = resized_crop_boxes(seed, epoch, samples, heights, widths)
        else:
            side = np.maximum(np.rint(np.minimum(heights, widths) * CENTRE_FRACTION), 1).astype(np.int64)
            box = ((heights - side) // 2, (widths - side) // 2, side, side)
        flips = (_below(counter_hash(seed, epoch, samples, _FLIP_STREAM), 2) == 1) if self.flip \
            else torch.zeros(len(samples), dtype=torch.bool)
        return Recipes(rows.cpu().long(), *(torch.from_numpy(np.ascontiguousarray(b)) for b in box), flips)

    def draw(self, seed: int, epoch: int, indices: torch.Tensor) -> Recipes:
        """Each image's view in ``epoch`` of a run seeded ``seed`` (reads each file's header)."""
        sizes = np.array([image_size(self.path(i)) for i in indices.tolist()], dtype=np.int64).reshape(-1, 2)
        return self._boxes(seed, epoch, indices, sizes)

    def drawn_and_rendered(self, seed: int, epoch: int, indices: torch.Tensor) -> tuple[torch.Tensor, Recipes]:
        """Each file opened once: its size draws the box, its decode renders it."""
        images = [read_image(self.path(i)) for i in indices.tolist()]
        sizes = np.array([(im.height, im.width) for im in images], dtype=np.int64).reshape(-1, 2)
        recipes = self._boxes(seed, epoch, indices, sizes)
        return self._rendered(images, recipes), recipes

    def render(self, recipes: Recipes) -> torch.Tensor:
        """The views as a normalised float32 batch, B x 3 x size x size."""
        return self._rendered([read_image(self.path(i)) for i in recipes.indices.tolist()], recipes)

    def _rendered(self, images: list[Image.Image], recipes: Recipes) -> torch.Tensor:
        out = np.empty((len(images), self.size, self.size, 3), dtype=np.uint8)
        for n, (image, top, left, h, w, flip) in enumerate(zip(
                images, recipes.top.tolist(), recipes.left.tolist(), recipes.height.tolist(),
                recipes.width.tolist(), recipes.flip.tolist())):
            if top < 0 or left < 0 or h < 1 or w < 1 or top + h > image.height or left + w > image.width:
                raise ValueError(f"view recipe {n}: box (top {top}, left {left}, {h} x {w}) lies outside "
                                 f"{self.paths[int(recipes.indices[n])]} ({image.height} x {image.width})")
            crop = TF.resized_crop(image, top, left, h, w, [self.size, self.size],
                                   InterpolationMode.BILINEAR, antialias=True)
            out[n] = np.asarray(TF.hflip(crop) if flip else crop)
        batch = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255)
        return normalise(batch, self.mean, self.std)

    def check_boxes(self, recipes: Recipes, what: str) -> None:
        """A box has a positive size and starts inside its image (its end is checked against the image's
        size when the file is read)."""
        for name, values, low in (("crop row", recipes.top, 0), ("crop column", recipes.left, 0),
                                  ("crop height", recipes.height, 1), ("crop width", recipes.width, 1)):
            bad = values < low
            if bool(bad.any()):
                raise ValueError(f"view recipe {int(bad.nonzero()[0, 0])}: {what}{name} {int(values[bad][0])} "
                                 f"is below {low}")
