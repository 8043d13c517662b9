"""An ImageNet-like JPEG folder for benchmarks: ``ROOT/train/CLASS/*.JPEG`` and ``ROOT/val/CLASS/*.JPEG``.

    python benchmarks/imagenet_like.py /tmp/imagenet-like --classes 200 --per-class 10 --val-per-class 2

Like ImageNet's files in what a data loader pays for: JPEG at quality 90, each side drawn independently
in [300, 500] px, content with real images' statistics rather than white noise (which JPEG compresses
badly and decodes slowly). Each image is 1/f-like luminance (six octaves of low-resolution noise upsampled
bicubically, each octave weaker by a drawn factor), per-pixel texture of a drawn strength at a 2-px scale,
slow chroma, and a few translucent flat shapes with sharp edges, on a class-coloured base: about 30-100 KB
a file, 57 KB on average (ImageNet's own average is ~110 KB at ~400 x 350), with ~1.6 ms to decode one with PIL on a Xeon
core. Class folders are named as ImageNet's (``n00000000``), files ``CLASS_I.JPEG``.

Seeded and idempotent: every image is a pure function of (seed, split, class, i); ``ROOT/imagenet_like.json``
records the parameters, written last, so a folder with the same record is reused as it is, one with
another record (made by this script) is made again, and a folder with ``train``/``val`` but no record
(not made here) is refused rather than overwritten.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RECORD = "imagenet_like.json"
VERSION = 1
SPLITS = {"train": 0, "val": 1}


def _up(small: np.ndarray, h: int, w: int, how=Image.BICUBIC) -> np.ndarray:
    return np.asarray(Image.fromarray(small, mode="F").resize((w, h), how))


def image(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """One h x w x 3 uint8 image with real images' statistics (see the module's docstring)."""
    detail, slope = rng.uniform(0.35, 1.1), rng.uniform(0.5, 0.75)
    lum, amp = np.zeros((h, w), np.float32), 1.0
    for cells in (3, 6, 12, 24, 48, 96):  # cells across a 400-px side
        small = rng.standard_normal((max(2, cells * h // 400), max(2, cells * w // 400))).astype(np.float32)
        lum += amp * _up(small, h, w)
        amp *= slope
    lum += detail * _up(rng.standard_normal((h // 2, w // 2)).astype(np.float32), h, w, Image.BILINEAR)
    lum = (lum - lum.mean()) / (lum.std() + 1e-6)
    chroma = [_up(rng.standard_normal((4, 4)).astype(np.float32), h, w)
              + 0.5 * _up(rng.standard_normal((12, 12)).astype(np.float32), h, w) for _ in range(2)]
    tone = base + rng.uniform(-25, 25, 3)
    rgb = np.stack([tone[0] + 45 * lum + 20 * chroma[0],
                    tone[1] + 45 * lum - 10 * chroma[0] - 10 * chroma[1],
                    tone[2] + 45 * lum + 20 * chroma[1]], -1)
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    shapes = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(shapes)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * (w, h)
        sx, sy = rng.uniform(0.1, 0.5, 2) * (w, h)
        box = [float(x0), float(y0), float(x0 + sx), float(y0 + sy)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=int(rng.integers(60, 200)))
    tint = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(Image.composite(tint, picture, shapes.point(lambda v: v // 2)))


def class_name(c: int) -> str:
    return f"n{c:08d}"


def _write_class(job: tuple) -> int:
    """One class folder of one split; its files' total bytes."""
    root, split, c, count, seed, sides, quality = job
    folder = Path(root) / split / class_name(c)
    folder.mkdir(parents=True, exist_ok=True)
    base = np.random.default_rng([seed, 99, c]).uniform(70, 180, 3)
    total = 0
    for i in range(count):
        rng = np.random.default_rng([seed, SPLITS[split], c, i])
        h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        out = io.BytesIO()
        Image.fromarray(image(rng, h, w, base)).save(out, format="JPEG", quality=quality)
        (folder / f"{class_name(c)}_{i}.JPEG").write_bytes(out.getvalue())
        total += out.tell()
    return total


def make_folder(root: str | os.PathLike, classes: int = 200, per_class: int = 10, val_per_class: int = 2,
                seed: int = 0, sides: tuple[int, int] = (300, 500), quality: int = 90, processes: int | None = None,
                log=print) -> dict:
    """Writes the folder unless it is already there with these parameters; returns its record."""
    root = Path(root)
    params = {"version": VERSION, "classes": classes, "per_class": per_class, "val_per_class": val_per_class,
              "seed": seed, "sides": list(sides), "quality": quality}
    record_path = root / RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if {k: record.get(k) for k in params} == params:
            log(f"{root}: already there ({record['files']:,} files, {record['bytes'] / 1e6:.1f} MB), reused")
            return record
        log(f"{root}: made with other parameters; made again")
        record_path.unlink()
        for split in SPLITS:
            shutil.rmtree(root / split, ignore_errors=True)
    elif any((root / split).exists() for split in SPLITS):
        raise SystemExit(f"{root} holds train/ or val/ but no {RECORD}: not made by this script, so not "
                         "overwritten; give another folder")
    jobs = [(str(root), split, c, n, seed, tuple(sides), quality)
            for split, n in (("train", per_class), ("val", val_per_class)) for c in range(classes)]
    start = time.perf_counter()
    processes = processes or min(os.cpu_count() or 1, 8)
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            sizes = list(pool.map(_write_class, jobs, chunksize=max(1, len(jobs) // (8 * processes))))
    else:
        sizes = [_write_class(job) for job in jobs]
    files = classes * (per_class + val_per_class)
    record = {**params, "files": files, "bytes": sum(sizes)}
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    log(f"{root}: wrote {files:,} files ({sum(sizes) / 1e6:.1f} MB, {sum(sizes) / files / 1e3:.0f} KB a file) "
        f"in {time.perf_counter() - start:.1f} s")
    return record


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--per-class", type=int, default=10, help="training images a class")
    p.add_argument("--val-per-class", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-side", type=int, default=300)
    p.add_argument("--max-side", type=int, default=500)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--processes", type=int, default=None, help="writers at once (default: the CPU count, at most 8)")
    a = p.parse_args(argv)
    make_folder(a.root, a.classes, a.per_class, a.val_per_class, a.seed, (a.min_side, a.max_side), a.quality,
                a.processes)


if __name__ == "__main__":
    sys.exit(main())
