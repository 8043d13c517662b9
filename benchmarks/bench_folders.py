"""Image folders as view recipes, measured on an ImageNet-like JPEG folder (benchmarks/imagenet_like.py).

    python benchmarks/bench_folders.py --quick                       # a smoke test (200 images, one round)
    python benchmarks/bench_folders.py --classes 200 --per-class 10 --rounds 3 --workers 0,2

a. Loader images/s: the trainer's own path (``training_items`` -> ``RenderedViews`` over the folder's
   ``ImageFiles`` at 224, through ``build_loaders``' DataLoader: its sampler, ``collate_fn``, worker start
   method and persistence) against torchvision's ``ImageFolder`` + ``RandomResizedCrop(224),
   RandomHorizontalFlip, ToTensor, Normalize`` + ``DataLoader(batch_size=64, shuffle=True, num_workers=W)``,
   the same W, in alternating rounds (the first of each pair alternates), median reported. Each pass is a
   whole epoch of the training split. "steady" leaves out the first batch and the time to it (the loader
   processes' start: forked by the baseline at every epoch, a persistent forkserver's for the trainer);
   "epoch" counts it. The page cache is warmed first (every file read once), so this is decode and
   render speed, not the disk's.
b. Render images/s on one core (``torch.set_num_threads(1)``): ``ImageFiles.render(recipes)`` from the
   JPEG files (what a teacher server does per recipe request), the trainer's ``drawn_and_rendered``
   (each file read once: its size draws the box, its decode renders it), ``draw`` alone (the headers
   read to draw boxes), and the baseline's per-image transform (``ImageFolder[i]``, stacked).
c. Decode choices, ms an image on one core: PIL's decode, PIL decode + ``resized_crop`` to 224, torchvision.io's
   ``decode_jpeg`` (+ the tensor ``resized_crop`` with antialias), PIL with ``draft`` at 1/2 scale; and the
   share of this folder's RandomResizedCrop boxes at least 2x the output side in both dimensions (the only
   ones a 1/2 draft could serve without changing the 224 output's resolution).
d. Bytes per teacher image at 3x224x224: a recipe row and the serialised ``InferRequest`` of 64 recipe
   rows, against 64 images as pixels (float32, float16, uint8 via ``common.codec.encode``).
e. Bytes per stored view in an answer store: 256 replayed-view entries (``ViewShelf``'s keys, the replay
   query's header) of 10 and 1000 float32 logits, by the codec's own ``encode`` and by the LMDB files.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import imagenet_like  # noqa: E402

BATCH = 64
SIZE = 224
SEED = 0


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_table(argv: list[str]) -> str:
    import PIL
    import torchvision
    from PIL import features

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return table(["", ""], [
        ["command", "`" + " ".join(shlex.quote(a) for a in ["python", *argv]) + "`"],
        ["CPUs", f"{os.cpu_count()} ({usable} usable by this process)"],
        ["CPU model", cpu_model()],
        ["load average (1, 5, 15 min) at start", load],
        ["python / torch / torchvision / Pillow", f"{platform.python_version()} / {torch.__version__} / "
                                                  f"{torchvision.__version__} / {PIL.__version__}"],
        ["Pillow's JPEG", f"libjpeg {features.version('jpg')}, turbo: {features.check_feature('libjpeg_turbo')}"],
    ])


def warm_page_cache(root: Path) -> tuple[int, int, float]:
    start = time.perf_counter()
    files = nbytes = 0
    for path in sorted(root.rglob("*.JPEG")):
        nbytes += len(path.read_bytes())
        files += 1
    return files, nbytes, time.perf_counter() - start


def med(values) -> float:
    return statistics.median(values)


# --- a. loaders ------------------------------------------------------------------------------------------

def timed_pass(loader, limit: int | None = None) -> dict:
    """One pass (an epoch, or ``limit`` batches): images/s over it all, and after the first batch."""
    start = time.perf_counter()
    first = first_n = None
    n = batches = 0
    for batch in loader:
        n += len(batch[0])
        batches += 1
        if first is None:
            first, first_n = time.perf_counter(), n
        if limit is not None and batches >= limit:
            break
    end = time.perf_counter()
    if n == first_n:
        raise SystemExit("a loader pass of a single batch has no steady rate: give more images a class")
    return {"epoch": n / (end - start), "steady": (n - first_n) / (end - first),
            "first_s": first - start, "images": n}


def trainer_loader(spec, workers: int):
    """The trainer's own training loader for this spec (student_trainer.engine.build.build_loaders)."""
    from student_trainer.engine.build import build_loaders
    from student_trainer.engine.data_order import training_items
    from student_trainer.engine.distributed import DistInfo

    items = training_items(spec, "batched", SEED)
    assert type(items).__name__ == "RenderedViews", items
    config = SimpleNamespace(data=SimpleNamespace(workers=workers, drop_last=False), run=SimpleNamespace(seed=SEED),
                             batch_size=BATCH)
    sampler, loader, _ = build_loaders(config, spec, items, DistInfo(), torch.device("cpu"), BATCH)
    return sampler, loader


def baseline_dataset(root: Path, mean, std):
    from torchvision import datasets, transforms

    return datasets.ImageFolder(str(root / "train"), transform=transforms.Compose([
        transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean, std)]))


def bench_loaders(spec, root: Path, workers: list[int], rounds: int, log) -> str:
    from torch.utils.data import DataLoader

    baseline = baseline_dataset(root, spec.mean, spec.std)
    rows = []
    for w in workers:
        sampler, ours = trainer_loader(spec, w)
        base = DataLoader(baseline, batch_size=BATCH, shuffle=True, num_workers=w)
        epoch = 1
        sampler.set_epoch(epoch)
        timed_pass(ours, limit=3)  # starts the trainer's persistent loader processes
        timed_pass(base, limit=3)
        got = {"ours": [], "base": []}
        for r in range(rounds):
            for who in (("ours", "base") if r % 2 == 0 else ("base", "ours")):
                if who == "ours":
                    epoch += 1
                    sampler.set_epoch(epoch)
                    got[who].append(timed_pass(ours))
                else:
                    got[who].append(timed_pass(base))
                log(f"  a. W={w} round {r + 1} {who}: {got[who][-1]['steady']:.0f} images/s steady, "
                    f"{got[who][-1]['epoch']:.0f} over the epoch, first batch after {got[who][-1]['first_s']:.2f} s")
        del ours, base  # the trainer's persistent loader processes end here
        o, b = ({k: med([g[k] for g in got[who]]) for k in ("steady", "epoch", "first_s")} for who in ("ours", "base"))
        rows.append([w, f"{o['steady']:.0f}", f"{b['steady']:.0f}", f"**{o['steady'] / b['steady']:.2f}x**",
                     f"{o['epoch']:.0f}", f"{b['epoch']:.0f}", f"{o['epoch'] / b['epoch']:.2f}x",
                     f"{o['first_s']:.2f} / {b['first_s']:.2f}"])
    return table(["workers W", "trainer (RenderedViews) img/s, steady", "ImageFolder baseline img/s, steady",
                  "ratio", "trainer img/s, epoch", "baseline img/s, epoch", "ratio, epoch",
                  "first batch after, s (trainer / baseline)"], rows)


# --- b. render on one core -------------------------------------------------------------------------------

def bench_render(views, baseline, batches: list[torch.Tensor], rounds: int) -> str:
    from common.views import Recipes

    recipes = [views.draw(SEED, 1, idx) for idx in batches]
    n = sum(len(idx) for idx in batches)

    def render(k):
        for r in recipes[:k]:
            views.render(r)

    def drawn_and_rendered(k):
        for idx in batches[:k]:
            views.drawn_and_rendered(SEED, 1, idx)

    def draw(k):
        for idx in batches[:k]:
            views.draw(SEED, 1, idx)

    def base(k):
        for idx in batches[:k]:
            torch.stack([baseline[i][0] for i in idx.tolist()])

    cases = [("`ImageFiles.render(recipes)` from JPEG (a teacher server's work per request)", render),
             ("`ImageFiles.drawn_and_rendered` (the trainer's loader)", drawn_and_rendered),
             ("`ImageFiles.draw` alone (headers read, boxes drawn)", draw),
             ("baseline `ImageFolder[i]` + `torch.stack` (RandomResizedCrop, flip, ToTensor, Normalize)", base)]
    assert isinstance(recipes[0], Recipes)
    for _, fn in cases:  # untimed: first calls pay for lazy imports and allocations
        fn(1)
    times = {name: [] for name, _ in cases}
    for r in range(rounds):
        for name, fn in (cases if r % 2 == 0 else cases[::-1]):
            start = time.perf_counter()
            fn(len(batches))
            times[name].append(time.perf_counter() - start)
    rows = [[name, f"{n / med(t):.0f}", f"{1e3 * med(t) / n:.2f}"] for name, t in times.items()]
    return table([f"one thread, {n} images in batches of {BATCH}", "images/s", "ms an image"], rows)


# --- c. decode choices -----------------------------------------------------------------------------------

def bench_decode(views, indices: torch.Tensor, rounds: int) -> str:
    from PIL import Image
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from common.image_files import read_image

    recipes = views.draw(SEED, 1, indices)
    jobs = [(views.path(i), t, l, h, w) for i, t, l, h, w in zip(
        indices.tolist(), recipes.top.tolist(), recipes.left.tolist(), recipes.height.tolist(),
        recipes.width.tolist())]

    def pil(path, *box):
        return read_image(path)

    def pil_crop(path, t, l, h, w):
        return np.asarray(TF.resized_crop(read_image(path), t, l, h, w, [SIZE, SIZE], InterpolationMode.BILINEAR,
                                          antialias=True))

    def tv(path, *box):
        return decode_jpeg(read_file(path))

    def tv_crop(path, t, l, h, w):
        return TF.resized_crop(decode_jpeg(read_file(path)), t, l, h, w, [SIZE, SIZE], InterpolationMode.BILINEAR,
                               antialias=True)

    def draft(path, *box):
        with Image.open(path) as image:
            image.draft("RGB", (image.width // 2, image.height // 2))
            return image.convert("RGB")

    cases = [("PIL decode (`read_image`: open + convert RGB)", pil),
             ("PIL decode + `resized_crop` to 224 (bilinear, antialias)", pil_crop),
             ("torchvision.io `decode_jpeg(read_file)`", tv),
             ("torchvision.io decode + tensor `resized_crop` to 224 (antialias)", tv_crop),
             ("PIL decode with `draft` at 1/2 scale (DCT-domain)", draft)]
    for _, fn in cases:  # untimed: first calls pay for lazy imports and allocations
        for job in jobs[:4]:
            fn(*job)
    times = {name: [] for name, _ in cases}
    for r in range(rounds):
        for name, fn in (cases if r % 2 == 0 else cases[::-1]):
            start = time.perf_counter()
            for job in jobs:
                fn(*job)
            times[name].append(time.perf_counter() - start)
    return table([f"one thread, {len(jobs)} images", "ms an image"],
                 [[name, f"{1e3 * med(t) / len(jobs):.2f}"] for name, t in times.items()])


def draft_share(views, epochs: int) -> str:
    from common.image_files import image_size, resized_crop_boxes

    sizes = np.array([image_size(views.path(i)) for i in range(len(views))], dtype=np.int64)
    heights, widths = sizes[:, 0], sizes[:, 1]
    indices = np.arange(len(views))
    big = small = 0
    for epoch in range(1, epochs + 1):
        _, _, h, w = resized_crop_boxes(SEED, epoch, indices, heights, widths)
        big += int(((h >= 2 * SIZE) & (w >= 2 * SIZE)).sum())
        small += int(((h < SIZE) | (w < SIZE)).sum())
    total = len(views) * epochs
    could = int(((heights >= 2 * SIZE) & (widths >= 2 * SIZE)).sum())
    return table(["RandomResizedCrop boxes on this folder", "share"], [
        [f"images with both sides >= {2 * SIZE} px (no box of the others can be)", f"{could / len(views):.1%}"],
        [f"boxes >= {2 * SIZE} px in both dimensions ({epochs} epochs x {len(views):,} images)", f"**{big / total:.2%}**"],
        [f"boxes below {SIZE} px in a dimension (upsampled)", f"{small / total:.1%}"],
    ])


# --- d. bytes on the wire --------------------------------------------------------------------------------

def bench_wire(views, indices: torch.Tensor) -> str:
    from common import codec
    from common.views import Views
    from protos import teacher_pb2 as pb

    recipes = views.draw(SEED, 1, indices)
    rows = views.to_split(Views(recipes)).as_array()
    request_id = uuid.uuid4().hex
    as_views = pb.InferRequest(views=pb.ViewRecipes(rows=rows.astype("<i8").tobytes(), render_dtype=pb.FLOAT16),
                               outputs=["logits"], request_id=request_id, output_dtype=pb.FLOAT32)
    n = len(indices)
    per_recipe = as_views.ByteSize() / n
    images = views.render(recipes)
    out = [["recipe row (13 int64)", rows.shape[1] * rows.itemsize, "", ""],
           [f"InferRequest of {n} recipe rows / {n}", f"{per_recipe:.1f}", "1", ""]]
    for dtype in ("float32", "float16", "uint8"):
        msg = pb.InferRequest(images=codec.encode(images, dtype), outputs=["logits"], request_id=request_id,
                              output_dtype=pb.FLOAT32)
        size = msg.ByteSize() / n
        out.append([f"InferRequest of {n} images as {dtype} pixels / {n}", f"{size:,.0f}", f"{size / per_recipe:,.0f}x",
                    f"{size / (3 * SIZE * SIZE):.3f}"])
    answer = pb.InferResponse(request_id=request_id)
    answer.outputs["logits"].CopyFrom(codec.encode(torch.randn(n, 1000), "float32"))
    out.append([f"for scale: InferResponse of {n} x 1000 float32 logits / {n}", f"{answer.ByteSize() / n:,.0f}",
                f"{answer.ByteSize() / n / per_recipe:.0f}x", ""])
    return table([f"bytes per teacher image, 3x{SIZE}x{SIZE}", "bytes", "vs the recipe request",
                  "bytes a pixel value"], out)


# --- e. bytes in an answer store -------------------------------------------------------------------------

def bench_store(views, indices: torch.Tensor, slots: int, workdir: Path) -> str:
    from common.answer_store import open_store
    from common.answer_store.codec import Entry, encode
    from common.views import Views
    from student_trainer.query.stored_views import ViewShelf

    samples = indices.tolist()
    rows_by_slot = [views.to_split(Views(views.draw(SEED, epoch, indices))).as_array().tolist()
                    for epoch in range(1, slots + 1)]
    out = []
    for classes in (10, 1000):
        path = workdir / f"store-{classes}"
        store = open_store(f"lmdb:{path}")
        shelf = ViewShelf(store, teacher_sha256="0" * 64, data_fingerprint="bench-folders", keys=["logits"],
                          views=slots)
        run_id = uuid.uuid4().hex[:16]
        gen = torch.Generator().manual_seed(classes)
        sizes, minimal = [], []
        for slot, rows in enumerate(rows_by_slot):
            entries = []
            for row in rows:
                logits = torch.randn(classes, generator=gen)
                entry = Entry({"recipe": row, "run": run_id, "step": 1000 + slot}, {"logits": logits})
                sizes.append(len(encode(entry)))
                minimal.append(len(encode(Entry({"recipe": row}, {"logits": logits}))))
                entries.append(entry)
            written = shelf.write(samples, [[slot]] * len(samples), entries)
            assert written == len(samples), written
        entries = len(sizes)
        env = store._env()
        used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        psize = env.stat()["psize"]
        stat = env.stat()
        store.close()
        file_bytes = (path / "data.mdb").stat().st_size
        key = len(shelf._key(0, 0))
        out.append([classes, entries, f"{med(sizes):,.0f}", f"{med(minimal):,.0f}", classes * 4, key,
                    f"{used / entries:,.0f}", f"{file_bytes / entries:,.0f}",
                    f"{stat['leaf_pages']} leaf, {stat['overflow_pages']} overflow ({psize} B pages)",
                    f"{3 * SIZE * SIZE / (used / entries):.0f}x"])
    return table(["classes", "entries", "encoded entry, B (replay's header: recipe, run, step)",
                  "encoded, B ({'recipe'} only)", "of which logits, B", "key, B", "LMDB pages used / entry, B",
                  "data.mdb size / entry, B", "LMDB pages", "uint8 pixels (150,528 B) / stored view"], out)


# --- main ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="the folder (made if missing; default /tmp/unix-kd-imagenet-like-CxN)")
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--per-class", type=int, default=10, help="training images a class")
    p.add_argument("--val-per-class", type=int, default=2)
    p.add_argument("--workers", default="0,2", help="loader processes W, comma-separated (default 0,2)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each measurement (median reported)")
    p.add_argument("--render-images", type=int, default=256, help="images of the one-core render figures (b)")
    p.add_argument("--decode-images", type=int, default=256, help="images of the decode figures (c)")
    p.add_argument("--quick", action="store_true", help="tiny: 10 classes x 20 images, one round (a smoke test)")
    a = p.parse_args(argv)
    if a.quick:
        a.classes, a.per_class, a.val_per_class, a.rounds = 10, 20, 1, 1
        a.render_images = a.decode_images = 32
    root = Path(a.root or f"/tmp/unix-kd-imagenet-like-{a.classes}x{a.per_class}")
    workers = [int(w) for w in a.workers.split(",") if w.strip()]
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {message}", file=sys.stderr, flush=True)

    header = machine_table([sys.argv[0], *argv])
    record = imagenet_like.make_folder(root, a.classes, a.per_class, a.val_per_class, log=log)
    files, nbytes, took = warm_page_cache(root)
    warmed = (f"Page cache warmed first: every file of {root} read once ({files:,} files, {nbytes / 1e6:.1f} MB, "
              f"{nbytes / files / 1e3:.0f} KB a file, in {took:.1f} s).")
    log(warmed)

    from common.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset

    spec = build_dataset(f"folder:{root}", image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    views = spec.train_views
    n = len(views)
    log(f"{n:,} training images in {spec.num_classes} classes; a. loaders")
    loaders = bench_loaders(spec, root, workers, a.rounds, log)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED))
    render_n = min(a.render_images, n) // BATCH * BATCH or min(a.render_images, n)
    batches = list(order[:render_n].split(BATCH))
    log(f"b. render on one core ({render_n} images)")
    render = bench_render(views, baseline_dataset(root, spec.mean, spec.std), batches, a.rounds)
    log(f"c. decode choices ({min(a.decode_images, n)} images)")
    decode = bench_decode(views, order[:min(a.decode_images, n)], a.rounds)
    share = draft_share(views, epochs=10)
    torch.set_num_threads(threads)

    log("d. wire bytes, e. store bytes")
    first = order[:min(BATCH, n)]
    wire = bench_wire(views, first)
    workdir = Path(tempfile.mkdtemp(prefix="bench-folders-"))
    try:
        store = bench_store(views, first, slots=4, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print("## bench_folders\n")
    print(header)
    print(f"\nFolder: {root}: {record['classes']} classes, {record['per_class']} training and "
          f"{record['val_per_class']} validation images a class, {min(record['sides'])}-{max(record['sides'])} px "
          f"a side, JPEG quality {record['quality']}. {warmed} Batch {BATCH}, views {SIZE} px, {a.rounds} "
          f"round(s) a figure, medians.\n")
    print(f"### a. Loader throughput (trainer's data path vs torchvision ImageFolder), {n:,} images an epoch\n")
    print(loaders)
    print("\n### b. Rendering on one core\n")
    print(render)
    print("\n### c. Decode choices\n")
    print(decode)
    print()
    print(share)
    print(f"\n### d. Bytes per teacher image (3x{SIZE}x{SIZE})\n")
    print(wire)
    print("\n### e. Bytes per stored view in an LMDB answer store (4 views of 64 images)\n")
    print(store)
    print(f"\nLoad average at the end: {load}. Took {time.perf_counter() - began:.0f} s.")


if __name__ == "__main__":
    main()
