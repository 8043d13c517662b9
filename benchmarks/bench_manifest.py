"""How long a split's manifest takes: cold (every file read and hashed) and warm (stat only, digests
from the cache), with the extrapolation to ImageNet's training split (1,281,167 files, ~140 GB).

    python benchmarks/bench_manifest.py                      # 5,000 files of ~110 KB (~550 MB), 100 classes
    python benchmarks/bench_manifest.py --files 20000 --kb 110 --workers 8 --dir /data/scratch

Files are ImageNet-like in name (nCLASS/nCLASS_I.JPEG) and size (110 KB mean, ImageNet's; spread
0.3x..1.7x): a small real JPEG padded after its end marker with random bytes, as hashing reads bytes,
not pixels. Their times are set an hour back, so the cache may keep them (common.manifest.RACY_NS).

Cold is measured twice: with the page cache as it is (the files were just written, so they are in
memory: the hash's own speed), and after asking the kernel to drop each file's pages
(posix_fadvise DONTNEED, after a sync): reads from this machine's disk (or the hypervisor's cache
under it; a VM's "disk" may be faster or slower than the real one). Warm: a restart with every file
unchanged: listing, one stat a file, and the binary cache read back.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.manifest import Manifest, first_difference, list_split  # noqa: E402

IMAGENET_FILES = 1_281_167
IMAGENET_BYTES = 140e9


def small_jpeg(rng: np.random.Generator) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_split(root: Path, files: int, kb: float, classes: int, seed: int = 0) -> int:
    """``files`` JPEG-headed files of ``kb`` KB on average under ``classes`` folders; their total bytes."""
    rng = np.random.default_rng(seed)
    heads = [small_jpeg(rng) for _ in range(8)]
    total = 0
    for i in range(files):
        c = i % classes
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        head = heads[i % len(heads)]
        size = max(len(head), int(kb * 1000 * rng.uniform(0.3, 1.7)))
        data = head + rng.bytes(size - len(head))
        (folder / f"n{c:08d}_{i}.JPEG").write_bytes(data)
        total += len(data)
    hour_ago = time.time_ns() - 3600 * 10**9
    for path in root.rglob("*.JPEG"):
        os.utime(path, ns=(hour_ago, hour_ago))
    return total


def drop_page_cache(root: Path) -> None:
    """Asks the kernel to forget the files' pages (no root needed; dirty pages are synced first)."""
    os.sync()
    for path in root.rglob("*.JPEG"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def row(what: str, seconds: float, files: int, total: int, extrapolate: str) -> None:
    rate = f"{files / seconds:,.0f} files/s, {total / seconds / 1e6:,.0f} MB/s" if total else \
        f"{files / seconds:,.0f} files/s"
    print(f"| {what} | {seconds:.2f} s | {rate} | {extrapolate} |")


def imagenet(seconds: float, files: int, total: int, by_bytes: bool) -> str:
    scale = IMAGENET_BYTES / total if by_bytes else IMAGENET_FILES / files
    estimate = seconds * scale
    return f"{estimate / 60:,.1f} min" if estimate >= 60 else f"{estimate:,.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--kb", type=float, default=110.0, help="mean file size in KB (ImageNet's: 110)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4, help="files read at once (common.manifest.WORKERS)")
    parser.add_argument("--dir", help="where the files are written (default: a temporary folder, removed)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-manifest-", dir=args.dir))
    try:
        run(base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, args) -> None:
    root, cache = base / "train", base / "manifest.json"
    total, seconds = timed(write_split, root, args.files, args.kb, args.classes)
    n = args.files
    print(f"{n:,} files, {total / 1e6:,.0f} MB ({total / n / 1e3:.0f} KB mean) in {args.classes} classes, "
          f"written in {seconds:.1f} s; {os.cpu_count()} CPUs, {args.workers} workers\n")
    print("| step | time | rate | ImageNet train (1.28 M files, 140 GB) |\n|---|---|---|---|")
    _, listing = timed(list_split, str(root))
    row("listing (ImageFolder's order)", listing, n, 0, imagenet(listing, n, total, False))
    hot, seconds = timed(Manifest.build, root, cache=cache, workers=args.workers)
    assert hot.hashed == n
    row("cold, files in the page cache", seconds, n, total, imagenet(seconds, n, total, True))
    drop_page_cache(root)
    cold, seconds = timed(Manifest.build, root, cache=False, workers=args.workers)
    row("cold, page cache dropped (disk reads)", seconds, n, total, imagenet(seconds, n, total, True))
    warm, seconds = timed(Manifest.build, root, cache=cache, workers=args.workers)
    assert warm.hashed == 0 and warm.fingerprint == cold.fingerprint == hot.fingerprint
    row("warm: stat only, digests from the cache", seconds, n, 0, imagenet(seconds, n, total, False))
    fresh = Manifest.build(root, cache=cache)
    _, seconds = timed(lambda: fresh.fingerprint)
    row("fingerprint of the entries", seconds, n, 0, imagenet(seconds, n, total, False))
    other = Manifest.build(root, cache=cache)  # the other side, its last file's digest altered
    last = len(other.digests) - 32
    other.digests = other.digests[:last] + bytes([other.digests[last] ^ 1]) + other.digests[last + 1:]
    line, seconds = timed(first_difference, fresh, other.range_digest, other.entry)
    print(f"| first_difference (last file differs) | {seconds * 1e3:.1f} ms | | "
          f"~{np.log2(IMAGENET_FILES):.0f} range digests of up to 41 MB each |")
    size = cache.stat().st_size
    print(f"\ncache file: {size / 1e6:.2f} MB ({size / n:.0f} bytes a file; ImageNet: "
          f"{size / n * IMAGENET_FILES / 1e6:,.0f} MB)\nfirst_difference said: {line}")


if __name__ == "__main__":
    main()
