"""A split's manifest: ImageFolder's order, a fingerprint of the files' bytes alone (not their place or
times), the first difference between two copies named in one line, digests cached by stat, and a
damaged cache or a vanished file met with one line, never a crash."""
import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

import common.manifest as manifest
from common.manifest import CACHE_NAME, Manifest, first_difference

CLASSES = ("cat", "dog", "fox")
HOUR_AGO = 3600 * 10**9


def write_split(root: Path, per_class: int = 4) -> Path:
    """Tiny JPEGs and PNGs (one in a subfolder, one .JPEG), plus a file ImageFolder does not take."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name / "more").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (8 + i, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / (f"{i}.jpg" if i % 2 else f"{i}.png"))
        Image.fromarray(pixels).save(root / name / "more" / "x.JPEG", format="JPEG")
        (root / name / "notes.txt").write_text("not an image")
    return root


def age(root: Path, ns: int = HOUR_AGO) -> None:
    """Every file's times set ``ns`` in the past (older than RACY_NS, so its digest may be cached)."""
    when = os.stat(root).st_mtime_ns - ns
    for path in root.rglob("*"):
        os.utime(path, ns=(when, when))


@pytest.fixture
def split(tmp_path) -> Path:
    root = write_split(tmp_path / "a" / "train")
    age(root)
    return root


def copy_of(split: Path, tmp_path: Path) -> Path:
    """The same files elsewhere (``train`` again, so messages name the same split), with other times."""
    other = tmp_path / "b" / "train"
    shutil.copytree(split, other)
    age(other, 2 * HOUR_AGO)
    return other


def rewrite(path: Path, data: bytes) -> None:
    """``data`` in ``path``, its times set in the past (other times than the file had: the stat differs)."""
    path.write_bytes(data)
    when = path.stat().st_mtime_ns - 3 * HOUR_AGO
    os.utime(path, ns=(when, when))


def calls(log: list, function):
    """``function``, recording each call's arguments in ``log`` (a remote side's RPCs, counted)."""
    def recorded(*args):
        log.append(args)
        return function(*args)
    return recorded


def test_the_entries_are_imagefolders_samples_in_its_order(split):
    m = Manifest.build(split, cache=False)
    folder = ImageFolder(str(split))
    assert [(str(split / p), label) for p, label in zip(m.paths, m.labels)] == folder.samples
    assert m.classes == tuple(folder.classes) == CLASSES and len(m) == 15 and m.name == "train"
    assert "cat/more/x.JPEG" in m.paths and not any(p.endswith(".txt") for p in m.paths)
    data = (split / m.entry(0).path).read_bytes()
    assert m.entry(0) == ("cat/0.png", len(data), hashlib.sha256(data).hexdigest())


def test_the_same_files_elsewhere_with_other_times_have_the_same_fingerprint(split, tmp_path):
    a, b = Manifest.build(split, cache=False), Manifest.build(copy_of(split, tmp_path), cache=False, workers=1)
    assert a.root != b.root and a.fingerprint == b.fingerprint
    assert list(a) == list(b) and a.range_digest(3, 5) == b.range_digest(3, 5)
    assert first_difference(a, b.range_digest, b.entry) is None
    shutil.copytree(split, tmp_path / "c" / "any name")  # the folder's own name is not part of it either
    assert Manifest.build(tmp_path / "c" / "any name", cache=False).fingerprint == a.fingerprint


def test_one_changed_byte_changes_the_fingerprint_and_is_named_after_few_calls(split, tmp_path):
    other = copy_of(split, tmp_path)
    data = bytearray((other / "dog" / "1.jpg").read_bytes())
    data[-3] ^= 1
    rewrite(other / "dog" / "1.jpg", bytes(data))
    here, there = Manifest.build(split, cache=False), Manifest.build(other, cache=False)
    assert here.fingerprint != there.fingerprint
    asked = []
    line = first_difference(here, calls(asked, there.range_digest), calls(asked, there.entry))
    size = f"{len(data):,} bytes"
    assert line == (f"train/dog/1.jpg differs: {size} sha256 {here.entry(6).digest[:12]}.. here, "
                    f"{size} {there.entry(6).digest[:12]}.. on the teacher")
    assert len(asked) <= 2 + int(np.ceil(np.log2(len(here))))


def test_an_added_or_removed_file_is_named_with_both_counts(split, tmp_path):
    other = copy_of(split, tmp_path)
    shutil.copy(other / "dog" / "1.jpg", other / "dog" / "1b.jpg")
    (other / "cat" / "2.png").unlink()
    here, there = Manifest.build(split, cache=False), Manifest.build(other, cache=False)
    assert first_difference(here, there.range_digest, there.entry) == "train/cat/2.png is missing on the teacher"
    assert first_difference(there, here.range_digest, here.entry, remote="the trainer") == \
        "train/cat/2.png is missing here"
    (split / "cat" / "2.png").unlink()
    here = Manifest.build(split, cache=False)
    assert first_difference(here, there.range_digest, there.entry) == \
        "the teacher has 15 files, this side 14: train/dog/1b.jpg is missing here"
    shutil.copy(split / "fox" / "3.jpg", split / "fox" / "more" / "y.jpg")  # after the last file
    shutil.copy(split / "dog" / "1.jpg", split / "dog" / "1b.jpg")
    here = Manifest.build(split, cache=False)
    assert first_difference(here, there.range_digest, there.entry) == \
        "the teacher has 15 files, this side 16: train/fox/more/y.jpg is missing on the teacher"


def test_a_renamed_file_is_named_on_both_sides(split, tmp_path):
    other = copy_of(split, tmp_path)
    (other / "fox" / "3.jpg").rename(other / "fox" / "3z.jpg")
    here, there = Manifest.build(split, cache=False), Manifest.build(other, cache=False)
    assert first_difference(here, there.range_digest, there.entry) == \
        "train/fox/3z.jpg is missing here (this side has train/fox/3.jpg in its place)"


def test_the_cache_spares_reading_unchanged_files_and_reads_changed_ones_again(split, tmp_path, monkeypatch):
    read = []
    monkeypatch.setattr(manifest, "hash_file", calls(read, manifest.hash_file))
    cache = tmp_path / "run" / "manifest.cache"
    first = Manifest.build(split, cache=cache)
    assert (len(read), first.hashed, first.cache_file) == (15, 15, cache)
    read.clear()
    again = Manifest.build(split, cache=cache)
    assert (read, again.hashed, again.fingerprint) == ([], 0, first.fingerprint)
    rewrite(split / "fox" / "0.png", b"other bytes")
    changed = Manifest.build(split, cache=cache)
    assert read == [(str(split / "fox" / "0.png"),)] and changed.fingerprint != first.fingerprint
    read.clear()
    os.utime(split / "cat" / "1.jpg", ns=(1, 1))  # same bytes, other times: read again, same fingerprint
    touched = Manifest.build(split, cache=cache)
    assert read == [(str(split / "cat" / "1.jpg"),)] and touched.fingerprint == changed.fingerprint


def test_a_file_written_just_now_is_not_cached(split, tmp_path):
    (split / "dog" / "0.png").write_bytes(b"fresh")  # its mtime is now: a write in the same tick could follow
    cache = tmp_path / "manifest.cache"
    assert Manifest.build(split, cache=cache).hashed == 15
    assert Manifest.build(split, cache=cache).hashed == 1


def test_the_default_cache_sits_in_the_split_else_in_the_users_cache(split, tmp_path, monkeypatch):
    monkeypatch.setattr("common.cache_dir.CACHE_DIR", str(tmp_path / "user"))
    beside, user = manifest.cache_paths(str(split), True)
    assert beside == split / CACHE_NAME and user.parent == tmp_path / "user" / "manifests"
    assert Manifest.build(split).cache_file == beside and Manifest.build(split).hashed == 0
    assert ImageFolder(str(split)).classes == list(CLASSES)  # the cache file is no class
    blocked = tmp_path / "a file"
    blocked.write_text("")
    cached = manifest.load_cache([beside], str(split))[0]
    assert manifest.save_cache([blocked / "x", user], str(split), cached) == user  # the first cannot be written
    assert manifest.load_cache([user], str(split)) == (cached, user) and len(cached.paths) == 15
    os.utime(beside, ns=(1, 1))  # an older cache beside the data (one it could not replace): the newer is read
    assert manifest.load_cache([beside, user], str(split))[1] == user


@pytest.mark.parametrize("damage", ["garbage", "truncated", "header", "foreign"])
def test_a_damaged_or_foreign_cache_is_one_log_line_and_rebuilt(split, tmp_path, caplog, damage):
    cache = tmp_path / "manifest.cache"
    fingerprint = Manifest.build(split, cache=cache).fingerprint
    whole = cache.read_bytes()
    if damage == "foreign":  # a whole cache, of another folder with the same files
        Manifest.build(copy_of(split, tmp_path), cache=cache)
    else:
        cache.write_bytes({"garbage": b"\x00garbage{", "truncated": whole[:-5],
                           "header": manifest.MAGIC + b"[1, 2]\n" + whole[len(manifest.MAGIC):]}[damage])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="common.manifest"):
        rebuilt = Manifest.build(split, cache=cache)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(cache) in warnings[0] and "\n" not in warnings[0], warnings
    assert (rebuilt.hashed, rebuilt.fingerprint) == (15, fingerprint)
    assert Manifest.build(split, cache=cache).hashed == 0 and cache.read_bytes() == whole


def test_a_file_gone_or_unreadable_is_one_line_naming_it(split, monkeypatch):
    listed = manifest.list_split

    def listed_then_removed(root):
        found = listed(root)
        (split / "dog" / "1.jpg").unlink()
        return found

    monkeypatch.setattr(manifest, "list_split", listed_then_removed)
    with pytest.raises(ValueError, match=r"^\S+/train/dog/1\.jpg vanished after its folder was listed"):
        Manifest.build(split, cache=False)
    monkeypatch.setattr(manifest, "list_split", listed)
    (split / "cat" / "9.jpg").symlink_to(split / "nowhere.jpg")
    with pytest.raises(ValueError, match=r"cat/9\.jpg is a link to \S+nowhere\.jpg, which does not exist$"):
        Manifest.build(split, cache=False)
    (split / "cat" / "9.jpg").unlink()

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(manifest, "open", refused, raising=False)  # (root reads any file: chmod cannot show it)
    with pytest.raises(ValueError, match=r"^cannot read \S+/train/cat/0\.png: Permission denied$"):
        Manifest.build(split, cache=False)


def test_a_folder_without_images_is_one_line(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"train: Found no valid file for the classes cat"):
        Manifest.build(tmp_path / "train", cache=False)
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such folder"):
        Manifest.build(tmp_path / "nowhere", cache=False)
