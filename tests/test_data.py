"""The data registry, read through the real torchvision loaders from tiny files in the real formats."""
import gzip
import pickle
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from common import data
from common.data import DatasetNotFoundError, build_dataset, list_datasets

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def unnormalise(image: torch.Tensor, spec) -> np.ndarray:
    """Back to the uint8 pixels that were written, as an HxWxC array."""
    mean, std = torch.tensor(spec.mean)[:, None, None], torch.tensor(spec.std)[:, None, None]
    return (image * std + mean).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def check_items(split, shape, labels, pixels=None, spec=None):
    assert len(split) == len(labels)
    for i, expected in enumerate(labels):
        image, label = split[i]
        assert image.dtype == torch.float32 and tuple(image.shape) == shape
        assert type(label) is int and label == expected
        if pixels is not None:
            np.testing.assert_array_equal(unnormalise(image, spec), pixels[i])


# --- CIFAR -----------------------------------------------------------------

def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the originals are Python 2 pickles


def cifar_batch(rng, n: int, classes: int, label_key: str, name: str) -> dict:
    batch = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "filenames": [f"img_{i}.png" for i in range(n)], label_key: rng.integers(0, classes, n).tolist()}
    if label_key == "fine_labels":
        batch["coarse_labels"] = [label // 5 for label in batch["fine_labels"]]
    return batch


def as_hwc(batches, label_key):
    pixels = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return pixels, sum((b[label_key] for b in batches), [])


def write_cifar10(root: Path, per_batch=2, n_test=3, seed=0):
    rng, folder = np.random.default_rng(seed), root / "cifar-10-batches-py"
    train = [cifar_batch(rng, per_batch, 10, "labels", f"training batch {i} of 5") for i in range(1, 6)]
    for i, batch in enumerate(train, 1):
        dump(folder / f"data_batch_{i}", batch)
    test = cifar_batch(rng, n_test, 10, "labels", "testing batch 1 of 1")
    dump(folder / "test_batch", test)
    dump(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)],
                                   "num_cases_per_batch": per_batch, "num_vis": 3072})
    return as_hwc(train, "labels"), as_hwc([test], "labels")


def write_cifar100(root: Path, n_train=6, n_test=4, seed=0):
    rng, folder = np.random.default_rng(seed), root / "cifar-100-python"
    train = cifar_batch(rng, n_train, 100, "fine_labels", "training batch 1 of 1")
    test = cifar_batch(rng, n_test, 100, "fine_labels", "testing batch 1 of 1")
    dump(folder / "train", train)
    dump(folder / "test", test)
    dump(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                           "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return as_hwc([train], "fine_labels"), as_hwc([test], "fine_labels")


@pytest.mark.parametrize("name, write, classes", [("cifar10", write_cifar10, 10),
                                                  ("cifar100", write_cifar100, 100)])
def test_cifar_reads_the_real_format(tmp_path, name, write, classes):
    (train_px, train_y), (test_px, test_y) = write(tmp_path)
    spec = build_dataset(name, str(tmp_path), augment=False)
    assert (spec.name, spec.num_classes, spec.input_shape) == (name, classes, (3, 32, 32))
    check_items(spec.train, (3, 32, 32), train_y, train_px, spec)
    check_items(spec.test, (3, 32, 32), test_y, test_px, spec)
    augmented = build_dataset(name, str(tmp_path))
    check_items(augmented.train, (3, 32, 32), train_y)
    check_items(augmented.test, (3, 32, 32), test_y, test_px, spec)  # the test split is never augmented


def test_cifar_missing_files_say_where_and_what_to_do(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DatasetNotFoundError, match="meta") as err:
        build_dataset("cifar100", str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "cifar-100-python") in message and "--download" in message
    assert "\n" not in message and isinstance(err.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        build_dataset("cifar10", str(tmp_path / "nowhere"))


def test_subsets_are_seeded(tmp_path):
    (train_px, train_y), _ = write_cifar10(tmp_path, per_batch=4)
    picks = [[int(x) for x in build_dataset("cifar10", str(tmp_path), train_size=5, test_size=2,
                                            seed=s).train.indices] for s in (0, 0, 1)]
    assert picks[0] == picks[1] != picks[2] and len(picks[0]) == 5
    spec = build_dataset("cifar10", str(tmp_path), train_size=5, test_size=2, augment=False)
    check_items(spec.train, (3, 32, 32), [train_y[i] for i in picks[0]], train_px[picks[0]], spec)
    assert len(spec.test) == 2
    with pytest.raises(ValueError, match="train_size=21"):
        build_dataset("cifar10", str(tmp_path), train_size=21)


# --- Fashion-MNIST -----------------------------------------------------------

def idx_files(n_train=5, n_test=3, seed=0):
    """{file name: IDX bytes} in the format of the Fashion-MNIST release, plus the arrays."""
    rng = np.random.default_rng(seed)
    arrays, files = {}, {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        files[f"{split}-images-idx3-ubyte"] = struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes()
        files[f"{split}-labels-idx1-ubyte"] = struct.pack(">ii", 2049, n) + labels.tobytes()
        arrays[split] = (images[..., None], labels.tolist())
    return files, arrays


def write_idx(folder: Path, compressed: bool, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    files, arrays = idx_files(seed=seed)
    for name, payload in files.items():
        if compressed:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)
    return arrays


@pytest.fixture
def fashion_places(tmp_path, monkeypatch):
    """Stand-ins for the system folder and the user cache, so tests never see the real ones."""
    system, cache = tmp_path / "usr-share", tmp_path / "cache"
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", (str(system),))
    monkeypatch.setattr(data, "CACHE_DIR", str(cache))
    monkeypatch.delenv("UNIXKD_FASHION_MNIST_DIR", raising=False)
    return system, cache


def check_fashion(spec, arrays):
    assert (spec.num_classes, spec.input_shape) == (10, (1, 28, 28))
    for split, name in ((spec.train, "train"), (spec.test, "t10k")):
        check_items(split, (1, 28, 28), arrays[name][1], arrays[name][0], spec)


def test_fashion_mnist_from_the_system_gz_files(fashion_places):
    system, cache = fashion_places
    arrays = write_idx(system, compressed=True)
    check_fashion(build_dataset("fashion-mnist", augment=False), arrays)
    unpacked = cache / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    first = unpacked.stat().st_mtime_ns
    spec = build_dataset("fashion-mnist")  # unpacked once, then reused
    assert unpacked.stat().st_mtime_ns == first
    check_items(spec.train, (1, 28, 28), arrays["train"][1])


def test_fashion_mnist_from_root(tmp_path, fashion_places):
    arrays = write_idx(tmp_path / "plain" / "FashionMNIST" / "raw", compressed=False)
    check_fashion(build_dataset("fashion-mnist", str(tmp_path / "plain"), augment=False), arrays)
    arrays = write_idx(tmp_path / "gz" / "FashionMNIST" / "raw", compressed=True, seed=1)
    check_fashion(build_dataset("fashion-mnist", str(tmp_path / "gz"), augment=False), arrays)
    assert (tmp_path / "gz" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()  # next to the .gz
    assert not fashion_places[1].exists()  # a writable root needs no cache


def test_fashion_mnist_folder_from_the_environment(tmp_path, fashion_places, monkeypatch):
    arrays = write_idx(tmp_path / "elsewhere", compressed=True)
    monkeypatch.setenv("UNIXKD_FASHION_MNIST_DIR", str(tmp_path / "elsewhere"))
    check_fashion(build_dataset("fashion-mnist", augment=False), arrays)


def test_fashion_mnist_missing(tmp_path, fashion_places):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("fashion-mnist", str(tmp_path / "root"))
    message = str(err.value)
    assert str(fashion_places[0]) in message and str(tmp_path / "root" / "FashionMNIST" / "raw") in message
    assert "--data-root" in message and "\n" not in message


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_file(),
                    reason=f"{REAL_FASHION_MNIST} absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", (str(REAL_FASHION_MNIST.parent),))
    monkeypatch.setattr(data, "CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("UNIXKD_FASHION_MNIST_DIR", raising=False)
    spec = build_dataset("fashion-mnist", augment=False)
    assert (len(spec.train), len(spec.test)) == (60000, 10000)
    image, label = spec.test[0]
    assert image.shape == (1, 28, 28) and 0 <= label < 10
    batch = torch.stack([spec.train[i][0] for i in range(0, 60000, 60)])
    assert abs(batch.mean()) < 0.1 and abs(batch.std() - 1) < 0.1  # the published mean/std fit


# --- ImageFolder -------------------------------------------------------------

def test_imagenet_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split, sizes in (("train", [(40, 30), (64, 64)]), ("val", [(50, 50)])):
        for cls in ("n01", "n02", "n03"):
            for i, size in enumerate(sizes):
                (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    spec = build_dataset("imagenet", str(tmp_path))
    assert (spec.num_classes, spec.input_shape) == (3, (3, 224, 224))
    check_items(spec.train, (3, 224, 224), [0, 0, 1, 1, 2, 2])
    check_items(spec.test, (3, 224, 224), [0, 1, 2])
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "val" / "train"))):
        build_dataset("imagenet", str(tmp_path / "val"))


# --- synthetic ---------------------------------------------------------------

def test_synthetic_is_deterministic_and_normalised():
    start = time.perf_counter()
    a = build_dataset("synthetic", augment=False)
    elapsed = time.perf_counter() - start
    b = build_dataset("synthetic", augment=False)
    assert (len(a.train), len(a.test), a.input_shape, a.num_classes) == (5000, 1000, (3, 32, 32), 10)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.targets, b.test.targets)
    assert not torch.equal(a.train.images, build_dataset("synthetic", seed=1).train.images)
    image, label = a.train[0]
    assert image.dtype == torch.float32 and type(label) is int
    for split in (a.train, a.test):
        assert abs(split.images.mean()) < 0.05 and abs(split.images.std() - 1) < 0.05
    assert elapsed < 5, f"generating 5000 images took {elapsed:.1f}s"  # ~0.3 s on an idle core


def test_synthetic_custom_shape_and_balanced_labels():
    spec = build_dataset("synthetic", image_shape=(1, 28, 28), num_classes=5, train_size=103, test_size=20)
    assert (len(spec.train), len(spec.test), spec.input_shape, spec.num_classes) == (103, 20, (1, 28, 28), 5)
    assert spec.train[0][0].shape == (1, 28, 28) and (spec.mean, spec.std) == ((0.0,), (1.0,))
    assert torch.bincount(spec.train.targets, minlength=5).tolist() == [21, 21, 21, 20, 20]
    assert torch.bincount(spec.test.targets).tolist() == [4] * 5
    # the test split does not depend on the size of the train split
    assert torch.equal(build_dataset("synthetic", num_classes=5, image_shape=(1, 28, 28),
                                     test_size=20).test.images, spec.test.images)


@pytest.fixture
def one_thread():
    """A tiny model gains nothing from threads, and they crawl when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_synthetic_is_learnable_but_not_trivial(one_thread):
    spec = build_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(spec.train, batch_size=64, shuffle=True, drop_last=True)
    step = 0
    while step < 200:
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == 200:
                break
    with torch.no_grad():
        accuracy = (model(spec.test.images).argmax(1) == spec.test.targets).float().mean().item()
    print(f"synthetic: small CNN test accuracy after 200 steps = {accuracy:.3f}")
    assert 0.4 < accuracy < 0.98  # chance is 0.1


# --- the registry --------------------------------------------------------------

def test_registry_names_and_errors(tmp_path):
    assert set(list_datasets()) >= {"cifar10", "cifar100", "fashion-mnist", "imagenet", "synthetic"}
    with pytest.raises(ValueError, match="cifar10.*synthetic"):
        build_dataset("mnist")
    with pytest.raises(ValueError, match="image_shape"):
        build_dataset("cifar10", str(tmp_path), image_shape=(3, 64, 64))
    with pytest.raises(ValueError, match="num_classes"):
        build_dataset("fashion-mnist", num_classes=5)
    with pytest.raises(ValueError, match="image_shape"):
        build_dataset("synthetic", image_shape=(32, 32))


def test_a_new_data_set_is_one_entry(monkeypatch):
    monkeypatch.setattr(data, "DATASETS", dict(data.DATASETS))

    @data.register("tiny")
    def tiny(root):
        dataset = data.TensorImages(torch.zeros(8, 1, 4, 4), torch.arange(8) % 2)
        return data.DataSpec("tiny", dataset, dataset, 2, (1, 4, 4), (0.0,), (1.0,))

    spec = build_dataset("tiny", train_size=3)  # options it does not take: subsets made for it
    assert (len(spec.train), len(spec.test)) == (3, 8) and "tiny" in list_datasets()
