"""``--dataset folder:ROOT``: a user's own folder of JPEGs and PNGs, generated here, read as a data set and
trained on; a malformed folder is one line."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.cli_errors import one_line_errors
from common.data import DatasetNotFoundError, build_dataset
from student_trainer.cli import main as train

CLASSES = ("cat", "dog", "fox")


def write_folder(root: Path, train_per_class: int = 4, val_per_class: int = 2, classes=CLASSES) -> Path:
    """ImageFolder's layout; each class its own colour (so it can be learnt), odd sizes, JPEG and PNG."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 80, (36 + 4 * i, 40, 3), dtype=np.uint8)
                pixels[..., c % 3] += 150
                Image.fromarray(pixels).save(root / split / name / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    return root


def pixel_statistics(root: Path):
    """The per-channel mean and std of every training image, as written (0..1)."""
    pixels = np.concatenate([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255
                             for p in sorted((root / "train").rglob("*.*"))])
    return pixels.mean(0), pixels.std(0)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_folder_gives_its_classes_the_size_asked_and_a_measured_normalisation(tmp_path):
    root = write_folder(tmp_path / "pets")
    spec = build_dataset(f"folder:{root}", image_size=32, augment=False)
    assert (spec.name, spec.num_classes, spec.classes, spec.input_shape) == (f"folder:{root}", 3, CLASSES, (3, 32, 32))
    assert (len(spec.train), len(spec.test), spec.measured_on) == (12, 6, 12)
    views = spec.train_views  # its views are recipes: the centred box when unaugmented
    assert (len(views), views.size, views.augment, views.flip) == (12, 32, False, False)
    assert views.labels.tolist() == [label for _, label in spec.train.samples]
    mean, std = pixel_statistics(root)  # (the centre crops see nearly all of each image)
    np.testing.assert_allclose(spec.mean, mean, atol=0.02)
    np.testing.assert_allclose(spec.std, std, atol=0.02)
    images = torch.stack([spec.train[i][0] for i in range(len(spec.train))])
    assert images.shape == (12, 3, 32, 32) and abs(float(images.mean())) < 0.1
    assert [spec.train[i][1] for i in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    given = build_dataset("folder", str(root), image_size=24, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert (given.mean, given.std, given.measured_on, given.input_shape) == ((0.5,) * 3, (0.25,) * 3, 0, (3, 24, 24))


def test_the_folder_is_given_once_and_folder_settings_go_to_folders_only(tmp_path):
    root = write_folder(tmp_path / "pets")
    with pytest.raises(ValueError, match="names its folder, and --data-root /elsewhere another"):
        build_dataset(f"folder:{root}", "/elsewhere")
    assert build_dataset(f"folder:{root}", str(root), image_size=16).classes == CLASSES
    with pytest.raises(ValueError, match=r"mean does not apply to synthetic \(it has its own\); it is for folder"):
        build_dataset("synthetic", mean=(0.5,) * 3)
    with pytest.raises(ValueError, match="image_size does not apply to cifar10 .* it is for imagenet, folder"):
        build_dataset("cifar10", image_size=64)
    with pytest.raises(ValueError, match="--mean and --std need 3 numbers each"):
        build_dataset(f"folder:{root}", mean=(0.5,), std=(0.2,))


def _empty(folder: Path, remove: bool = False) -> None:
    for image in folder.iterdir():
        image.unlink()
    if remove:
        folder.rmdir()


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "val").rename(root / "test"), "no folder {root}/val; expected {root}/train/CLASS/*"),
    (lambda root: _empty(root / "train" / "dog"), "{root}/train: Found no valid file for the classes dog"),
    (lambda root: _empty(root / "val" / "fox", remove=True),
     "class fox of {root}/train has no folder in {root}/val; both splits need the same classes"),
    (lambda root: (root / "val" / "owl").mkdir(), "class owl of {root}/val has no folder in {root}/train"),
    (lambda root: (root / "train" / "cat" / "1.jpg").write_bytes(b"not a jpeg"),
     "cannot read image {root}/train/cat/1.jpg: cannot identify image file"),
], ids=["no-val", "class-without-images", "class-missing-from-val", "class-missing-from-train", "unreadable"])
def test_a_malformed_folder_is_one_line(tmp_path, capsys, damage, message):
    root = write_folder(tmp_path / "pets")
    damage(root)
    with pytest.raises(SystemExit) as exit_:
        train(["--dataset", f"folder:{root}", "--image-size", "32", "--arch", "resnet8", "--method", "ce",
               "--epochs", "1", "--workers", "0", "--no-progress", "--no-tensorboard", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert message.format(root=root) in one_line(capsys)


def test_an_empty_folder_is_one_line(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(DatasetNotFoundError, match="train holds no class folders"):
        build_dataset(f"folder:{tmp_path / 'empty'}")


def test_an_unreadable_image_in_a_loader_process_is_still_one_line(tmp_path, capsys):
    """The trainer reads with --workers processes: the error reaches it with the worker's traceback inside."""
    root = write_folder(tmp_path / "pets")
    (root / "val" / "dog" / "0.png").write_bytes(b"\x89PNG truncated")
    spec = build_dataset(f"folder:{root}", image_size=32)
    with pytest.raises(SystemExit), one_line_errors("student_trainer"):
        list(torch.utils.data.DataLoader(spec.test, batch_size=2, num_workers=1))
    assert f"student_trainer: error: cannot read image {root}/val/dog/0.png: " in one_line(capsys)


def test_a_student_trains_on_a_folder_and_keeps_its_classes_and_normalisation(tmp_path, caplog):
    root = write_folder(tmp_path / "pets", train_per_class=8)
    run = tmp_path / "run"
    flags = ["--dataset", f"folder:{root}", "--image-size", "32", "--arch", "timm.resnet10t", "--method", "ce",
             "--batch-size", "8", "--workers", "0", "--no-progress", "--no-tensorboard", "--out", str(run)]
    summary = train([*flags, "--epochs", "1"])
    assert summary["dataset"] == f"folder:{root}" and summary["steps"] == 3
    record = json.loads((run / "data.json").read_text())
    assert record["classes"] == list(CLASSES) and record["measured_on"] == 24 and record["input_shape"] == [3, 32, 32]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["meta"]["classes"] == list(CLASSES) and ckpt["meta"]["mean"] == record["mean"]
    assert (ckpt["arch"], ckpt["num_classes"], tuple(ckpt["input_shape"])) == ("timm.resnet10t", 3, (3, 32, 32))
    # Resumed, the run keeps the normalisation it measured at its start: measured once.
    with caplog.at_level("INFO", logger="common.data"):
        assert train([*flags, "--epochs", "2", "--resume", str(run)])["steps"] == 6
    assert "normalisation measured" not in caplog.text
    assert json.loads((run / "data.json").read_text()) == record
