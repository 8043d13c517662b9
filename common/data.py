"""Data sets by name, each built into the same :class:`DataSpec`.

Every entry returns train/test ``Dataset``s whose items are already
normalised float32 ``CxHxW`` tensors with an ``int`` label, so trainers never
branch on the data set.  Adding a data set is one ``@register`` function.

A builder takes ``root`` plus the keyword options it understands.  Options it
does not take are handled here instead: ``train_size``/``test_size`` become
seeded subsets, and the ``SETTINGS`` (``image_shape``, ``num_classes``,
``image_size``, ``mean``, ``std``) are refused, since a real data set's shape
and classes are facts, not settings. A name may carry its root: ``folder:ROOT``.
"""
from __future__ import annotations

import dataclasses
import gzip
import inspect
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from common import cache_dir
from common.image_files import ImageFiles
from common.views import StoredImages

DEFAULT_ROOT = "data"
"""Where file-based sets are looked for when no ``root`` is given."""

FASHION_MNIST_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
"""System folders searched for Fashion-MNIST (Debian's ``dataset-fashion-mnist``)."""

CACHE_DIR = cache_dir.CACHE_DIR
"""Where compressed files are unpacked when ``root`` is not writable."""


class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set are not where we looked; the message says what to do."""


@dataclass(frozen=True)
class DataSpec:
    """Train/test items are ``(normalised float32 CxHxW tensor, int label)``; the test
    split is never augmented.  ``mean``/``std`` undo the normalisation when needed.

    ``train_views``: the training split as a view source with its augmentation: held in memory
    (``common.views.StoredImages``) or read from files (``common.image_files.ImageFiles``), its
    views drawn as recipes and rendered a batch at a time.

    ``classes``: the class names where the data set has them (an image folder's folder names).
    ``measured_on``: the training images ``mean``/``std`` were measured on (0: given, or published)."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_views: StoredImages | ImageFiles | None = None
    classes: tuple[str, ...] = ()
    measured_on: int = 0


DATASETS: dict[str, Callable[..., DataSpec]] = {}


def register(name: str):
    def add(builder: Callable[..., DataSpec]) -> Callable[..., DataSpec]:
        DATASETS[name] = builder
        return builder
    return add


def list_datasets() -> list[str]:
    return sorted(DATASETS)


SETTINGS = ("image_shape", "num_classes", "image_size", "mean", "std")
"""Options that only some data sets take; given to one that does not, they are refused, not ignored."""

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

PUBLISHED_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
"""(mean, std) of the data sets whose normalisation is fixed, by name: what their images are normalised with
here, and so what a teacher trained on one of them expects (``student_trainer.library.TeacherModule``)."""


def build_dataset(name: str, root: str | None = None, *, train_size: int | None = None,
                  test_size: int | None = None, image_shape: tuple[int, int, int] | None = None,
                  num_classes: int | None = None, image_size: int | None = None,
                  mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, seed: int = 0,
                  augment: bool = True, download: bool = False) -> DataSpec:
    """``name`` may carry its root after a colon: ``folder:ROOT`` is ``folder`` with ``root=ROOT``."""
    name, colon, named_root = name.partition(":")
    if colon:
        if root is not None and root != named_root:
            raise ValueError(f"data set {name}:{named_root} names its folder, and --data-root {root} another; "
                             "give one")
        root = named_root
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(list_datasets())}")
    builder = DATASETS[key]
    accepted = inspect.signature(builder).parameters
    options = dict(train_size=train_size, test_size=test_size, image_shape=image_shape, num_classes=num_classes,
                   image_size=image_size, mean=mean, std=std, seed=seed, augment=augment, download=download)
    for setting in SETTINGS:
        if options[setting] is not None and setting not in accepted:
            takers = [n for n, b in DATASETS.items() if setting in inspect.signature(b).parameters]
            raise ValueError(f"{setting} does not apply to {key} (it has its own); it is for {', '.join(takers)}")
    spec = builder(root, **{k: v for k, v in options.items() if k in accepted})
    if "train_size" not in accepted:
        train = _subset_indices(spec.train, train_size, seed, "train_size")
        test = _subset_indices(spec.test, test_size, seed, "test_size")
        spec = dataclasses.replace(
            spec, train=spec.train if train is None else Subset(spec.train, train),
            test=spec.test if test is None else Subset(spec.test, test),
            train_views=spec.train_views.subset(train) if train is not None and spec.train_views else spec.train_views)
    if spec.train_views is not None and not augment:
        spec = dataclasses.replace(spec, train_views=spec.train_views.unaugmented())
    return spec


def _subset_indices(data: Dataset, size: int | None, seed: int, what: str) -> list[int] | None:
    """A seeded random subset's indices, so short runs see every class and stay repeatable."""
    if size is None:
        return None
    if not 0 < size <= len(data):
        raise ValueError(f"{what}={size} is out of range: this split has {len(data)} items")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return order[:size].sort().values.tolist()


def _transforms(augment: bool, crop: list, mean, std) -> tuple[Callable, Callable]:
    """(train, test) transforms; ``crop`` is the train-only geometric augmentation."""
    finish = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train = crop + [transforms.RandomHorizontalFlip()] if augment else []
    return transforms.Compose(train + finish), transforms.Compose(finish)


# --- CIFAR ---------------------------------------------------------------

def _presence_checked(cls):
    """``cls`` checking only that its files exist, not their md5 sums.

    torchvision refuses any file whose md5 differs from the official release,
    which rules out small test fixtures and user-made subsets in the same
    format.  Only the check changes (``md5=None`` means "present"); the parsing
    stays torchvision's, and a download still verifies the archive.
    """
    return type(cls.__name__, (cls,), {
        "train_list": [[f, None] for f, _ in cls.train_list],
        "test_list": [[f, None] for f, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


_CIFAR10 = _presence_checked(datasets.CIFAR10)
_CIFAR100 = _presence_checked(datasets.CIFAR100)


def _cifar(name: str, cls, num_classes: int, mean, std, root, augment, download) -> DataSpec:
    root = root or DEFAULT_ROOT
    folder = Path(root) / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    if not download and not all((folder / f).is_file() for f in files):
        raise DatasetNotFoundError(
            f"{name} not found: expected {', '.join(files)} in {folder}; pass --data-root "
            f"with the folder that holds {cls.base_folder}, or --download to fetch it")
    train_tf, test_tf = _transforms(augment, [transforms.RandomCrop(32, padding=4)], mean, std)
    train = cls(root, train=True, transform=train_tf, download=download)
    views = StoredImages(torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
                         torch.as_tensor(train.targets, dtype=torch.long), 4, True, mean, std)
    return DataSpec(name, train, cls(root, train=False, transform=test_tf), num_classes, (3, 32, 32), mean, std,
                    views)


@register("cifar10")
def cifar10(root, *, augment, download) -> DataSpec:
    return _cifar("cifar10", _CIFAR10, 10, *PUBLISHED_NORMALISATION["cifar10"], root, augment, download)


@register("cifar100")
def cifar100(root, *, augment, download) -> DataSpec:
    return _cifar("cifar100", _CIFAR100, 100, *PUBLISHED_NORMALISATION["cifar100"], root, augment, download)


# --- Fashion-MNIST ---------------------------------------------------------

FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _fashion_mnist_dirs(root: str | None) -> list[Path]:
    dirs = [Path(root) / "FashionMNIST" / "raw"] if root else []
    if os.environ.get("UNIXKD_FASHION_MNIST_DIR"):
        dirs.append(Path(os.environ["UNIXKD_FASHION_MNIST_DIR"]))
    return dirs + [Path(d) for d in FASHION_MNIST_DIRS] + [Path(CACHE_DIR) / "FashionMNIST" / "raw"]


def _has_all(folder: Path, gz_ok: bool = True) -> bool:
    return all((folder / f).is_file() or (gz_ok and (folder / f"{f}.gz").is_file())
               for f in FASHION_MNIST_FILES)


def _writable_base(root: str | None) -> Path:
    """``root`` when we may write there, else the user cache: the system copy is read-only."""
    if root:
        try:
            (Path(root) / "FashionMNIST" / "raw").mkdir(parents=True, exist_ok=True)
            if os.access(Path(root) / "FashionMNIST" / "raw", os.W_OK):
                return Path(root)
        except OSError:
            pass
    return Path(CACHE_DIR)


def _unpack(source_dir: Path, name: str, target: Path) -> None:
    """Put ``name`` at ``target`` uncompressed, redoing it only when the source is newer."""
    plain, packed = source_dir / name, source_dir / f"{name}.gz"
    source = plain if plain.is_file() else packed
    if target.is_file() and (target.samefile(source)
                             or target.stat().st_mtime >= source.stat().st_mtime):
        return
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    with (gzip.open if source is packed else open)(source, "rb") as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(partial, target)  # never leave a half-written file under the real name


def _fashion_mnist_root(root: str | None, download: bool) -> str:
    """A folder laid out as torchvision's ``FashionMNIST`` expects (``ROOT/FashionMNIST/raw``)."""
    dirs = _fashion_mnist_dirs(root)
    found = next((d for d in dirs if _has_all(d)), None)
    if found is None:
        if download:
            return str(_writable_base(root))
        raise DatasetNotFoundError(
            f"fashion-mnist not found: looked for {FASHION_MNIST_FILES[0]}[.gz] and the other "
            f"3 IDX files in {', '.join(map(str, dirs))}; pass --data-root DIR with "
            f"DIR/FashionMNIST/raw, or run 'apt-get install dataset-fashion-mnist'")
    if found.parts[-2:] == ("FashionMNIST", "raw") and _has_all(found, gz_ok=False):
        return str(found.parent.parent)
    base = _writable_base(root)
    (base / "FashionMNIST" / "raw").mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        _unpack(found, name, base / "FashionMNIST" / "raw" / name)
    return str(base)


@register("fashion-mnist")
def fashion_mnist(root, *, augment, download) -> DataSpec:
    mean, std = PUBLISHED_NORMALISATION["fashion-mnist"]
    base = _fashion_mnist_root(root, download)
    train_tf, test_tf = _transforms(augment, [transforms.RandomCrop(28, padding=2)], mean, std)
    train = datasets.FashionMNIST(base, train=True, transform=train_tf, download=download)
    views = StoredImages(train.data[:, None], train.targets.long(), 2, True, mean, std)
    return DataSpec("fashion-mnist", train, datasets.FashionMNIST(base, train=False, transform=test_tf),
                    10, (1, 28, 28), mean, std, views)


# --- image folders: ImageNet's tree, or any in its layout (common.image_folders) -----------------


def _image_folders(name: str, root, *, augment: bool, image_size: int, mean, std, seed: int = 0) -> DataSpec:
    """``root``/train and ``root``/val read image by image at ``image_size``; ``mean``/``std`` None: measured."""
    from common import image_folders

    if image_size < 1:
        raise ValueError(f"--image-size must be at least 1, got {image_size}")
    root = Path(root or DEFAULT_ROOT)
    try:
        classes = image_folders.check_layout(name, root)
    except FileNotFoundError as e:
        raise DatasetNotFoundError(str(e)) from None
    train_geometry, evaluation = image_folders.geometry(image_size, augment)
    train = image_folders.open_split(name, root / "train", None)
    measured_on = 0
    if mean is None or std is None:
        mean, std, measured_on = image_folders.measure_normalisation(train, evaluation, seed)
    image_folders.check_normalisation(mean, std)
    finish = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    train.transform = transforms.Compose(train_geometry + finish)
    test = image_folders.open_split(name, root / "val", transforms.Compose(evaluation + finish))
    views = ImageFiles(str((root / "train").resolve()),
                       tuple(Path(p).relative_to(train.root).as_posix() for p, _ in train.samples),
                       torch.as_tensor(train.targets, dtype=torch.long), image_size, tuple(mean), tuple(std),
                       augment=augment, flip=augment)
    return DataSpec(name, train, test, len(classes), (3, image_size, image_size), tuple(mean), tuple(std), views,
                    classes=tuple(classes), measured_on=measured_on)


@register("imagenet")
def imagenet(root, *, augment, image_size=None) -> DataSpec:
    return _image_folders("imagenet", root, augment=augment, image_size=image_size or 224, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD)


@register("folder")
def folder(root, *, augment, image_size=None, mean=None, std=None, seed=0) -> DataSpec:
    """Any folder in ImageFolder's layout (``--dataset folder:ROOT``); normalisation given or measured."""
    return _image_folders(f"folder:{root}", root, augment=augment, image_size=image_size or 224, mean=mean,
                          std=std, seed=seed)


# --- synthetic ---------------------------------------------------------------

class TensorImages(Dataset):
    """Images held in memory, with an optional per-item transform."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: Callable | None = None):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.targets[index])


# Difficulty of the synthetic task: largest shift (fraction of the side), and
# the strength of smooth clutter and of pixel noise relative to the prototypes.
SHIFT, CLUTTER, NOISE = 0.25, 1.25, 1.25


def _smooth_fields(generator: torch.Generator, count: int, channels: int, size, image_size):
    """Random low-frequency images of ``size``: noise on a coarse grid, upsampled.

    The grid has a point every quarter of ``image_size``, so features are the
    same size in prototypes (larger, to leave room for shifts) and in clutter.
    """
    grid = [1 + round(4 * s / i) for s, i in zip(size, image_size)]
    coarse = torch.randn(count, channels, *grid, generator=generator)
    return F.interpolate(coarse, size=tuple(size), mode="bicubic", align_corners=True)


def _samples(generator: torch.Generator, prototypes: torch.Tensor, clutter: torch.Tensor, n: int):
    """Randomly shifted crops of the prototypes, under random contrast, clutter and noise.

    Clutter lives in the same low-frequency space as the prototypes, so unlike
    pixel noise it does not average away: it keeps a model well below 100%
    and makes learning curves mean something.  Everything is a handful of
    whole-batch operations (many small ones crawl when the cores are shared).
    """
    k, c, h, w = len(prototypes), *clutter.shape[1:]
    crops = prototypes.unfold(2, h, 1).unfold(3, w, 1)  # view: k, c, y offset, x offset, h, w
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=generator)]
    y, x = (torch.randint(crops.shape[d], (n,), generator=generator) for d in (2, 3))
    contrast = 0.6 + 0.8 * torch.rand(n, 1, generator=generator)
    weights = torch.randn(n, len(clutter), generator=generator) * (CLUTTER / len(clutter) ** 0.5)
    # In place where possible: allocating full-size temporaries dominates the cost.
    images = torch.randn(n, c * h * w, generator=generator).mul_(NOISE)
    images.addmm_(weights, clutter.flatten(1))
    images.addcmul_(contrast, crops[labels, :, y, x].flatten(1))
    return images.view(n, c, h, w), labels


@register("synthetic")
def synthetic(root=None, *, train_size=None, test_size=None, image_shape=None, num_classes=None,
              seed=0, augment=True) -> DataSpec:
    """Learnable data made in memory, for tests and smoke runs without any files.

    Each class is a smooth random prototype; a sample is a shifted crop of it
    plus clutter and noise.  Each split has its own random stream, and the
    normalisation comes from a fixed-size reference draw, so neither split
    changes with the other's size.
    """
    shape, k = tuple(image_shape or (3, 32, 32)), num_classes or 10
    if len(shape) != 3 or min(shape) < 1 or k < 2:
        raise ValueError(f"synthetic needs image_shape (C, H, W) > 0 and >= 2 classes, "
                         f"got {shape} and {k}")
    c, h, w = shape
    classes, train, test, reference = (torch.Generator().manual_seed(4 * seed + i) for i in range(4))
    my, mx = round(SHIFT * h), round(SHIFT * w)
    prototypes = _smooth_fields(classes, k, c, (h + 2 * my, w + 2 * mx), (h, w))
    clutter = _smooth_fields(classes, 32, c, (h, w), (h, w))
    var, mean = torch.var_mean(_samples(reference, prototypes, clutter, 1000)[0], dim=(0, 2, 3), keepdim=True)
    splits = [_samples(g, prototypes, clutter, size) for g, size in ((train, train_size or 5000),
                                                                        (test, test_size or 1000))]
    for images, _ in splits:
        images.sub_(mean).div_(var.sqrt())
    (train_x, train_y), (test_x, test_y) = splits
    flip = transforms.RandomHorizontalFlip() if augment else None
    views = StoredImages(train_x, train_y, 0, augment, (0.0,) * c, (1.0,) * c)
    return DataSpec("synthetic", TensorImages(train_x, train_y, flip), TensorImages(test_x, test_y),
                    k, shape, (0.0,) * c, (1.0,) * c, views)
