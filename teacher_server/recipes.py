"""The training split a teacher server renders view recipes from, and a recipe request turned into images.

A trainer whose views are recipes (``common.views``) can send each row as 104
bytes instead of its pixels; the server renders it from its own copy of the
split, loaded with the trainer's own ``common.data.build_dataset``, so the two
render the same bits when their fingerprints agree (the trainer checks them at
start). The rendered batch is cast to the dtype its pixels would have had on
the wire, so the answer equals the one the pixels would have got.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

import numpy as np
import torch

from common import codec
from common.image_files import ImageFiles
from common.views import StoredImages, Views, check, render_views
from protos import teacher_pb2 as pb

ROW_BYTES = Views.COLUMNS * 8


@dataclass(frozen=True)
class ServedData:
    """A data set's whole training split, with its augmentation, as the trainer's ``--dataset NAME`` has it."""
    name: str
    views: StoredImages | ImageFiles

    def info(self) -> pb.DataSetInfo:
        manifest = self.views.manifest
        return pb.DataSetInfo(name=self.name, size=len(self.views), fingerprint=self.views.fingerprint,
                              files_fingerprint=manifest.fingerprint if manifest else "",
                              view_settings=json.dumps(self.views.view_settings(), sort_keys=True) if manifest else "")

    def manifest_range(self, start: int, count: int) -> pb.ManifestResponse:
        """A range of the folder's content manifest (and the entry at ``start``); ValueError (one line) for a
        split held in memory or a negative range."""
        manifest = self.views.manifest
        if manifest is None:
            raise ValueError(f"{self.name} is held in memory, not read from files: it has no manifest")
        digest, files = manifest.range_digest(start, count)
        reply = pb.ManifestResponse(range_digest=digest, files=files)
        if 0 <= start < files:
            path, size, sha = manifest.entry(start)
            reply.path, reply.size, reply.digest = path, size, sha
        return reply


def load_data(name: str, root: str | None, *, input_shape, num_classes: int, train_size: int | None = None,
              seed: int = 0, augment: bool = True, mean=None, std=None) -> ServedData:
    """The split as ``python -m student_trainer --dataset NAME`` builds it. A generated set (synthetic) is
    made at the teacher's shape and classes and ``train_size`` images; a real one is loaded whole, since a
    trainer's ``--train-size`` subset names its images by their place in the whole split. An image folder
    is read at the teacher's input size, with the trainer's ``--mean``/``--std`` (or measured as it measures
    them)."""
    from common.data import DATASETS, build_dataset

    key = name.partition(":")[0].lower().replace("_", "-")
    takes = set(inspect.signature(DATASETS[key]).parameters) if key in DATASETS else set()
    if train_size is not None and "train_size" not in takes:
        raise ValueError(f"--train-size sizes a generated data set (synthetic); {name} is served whole "
                         "(a trainer's --train-size subset of it renders from the whole split)")
    settings = {k: v for k, v in (("image_shape", tuple(input_shape)), ("num_classes", num_classes),
                                  ("train_size", train_size), ("image_size", input_shape[-1]),
                                  ("mean", mean), ("std", std)) if k in takes and v is not None}
    spec = build_dataset(name, root, seed=seed, augment=augment, **settings)
    if spec.train_views is None:
        raise ValueError(f"{spec.name} has no view source to render recipes from; serve without --dataset (its "
                         "trainers send pixels)")
    if tuple(spec.input_shape) != tuple(input_shape):
        raise ValueError(f"{spec.name} has {'x'.join(map(str, spec.input_shape))} images, but the teacher takes "
                         f"{'x'.join(map(str, input_shape))}")
    return ServedData(spec.name, spec.train_views)


def decode(msg: pb.ViewRecipes, data: ServedData) -> Views:
    """The rows of a request, checked against the split; ValueError (one line) for a byte length that is no
    whole number of rows, or a recipe the split cannot render."""
    rows = msg.rows
    if len(rows) == 0 or len(rows) % ROW_BYTES:
        raise ValueError(f"view recipes must be whole rows of {Views.COLUMNS} int64 ({ROW_BYTES} bytes each), "
                         f"at least one; got {len(rows)} bytes")
    views = Views.from_array(np.frombuffer(rows, dtype="<i8").reshape(-1, Views.COLUMNS))
    check(data.views, views)
    return views


def render(data: ServedData, views: Views, dtype: int, rows: list[int] | None = None) -> torch.Tensor:
    """The rows rendered as the trainer made them, then as their pixels would have reached the server in
    ``dtype`` (a wire DType code): through the wire's own codec, so a uint8 batch is quantised as a whole.
    ``rows``: only these (the others were answered from the store)."""
    if rows is not None and dtype != pb.UINT8:
        views = views.take(rows)
    images = render_views(data.views, views)
    images = images if dtype == pb.FLOAT32 else codec.decode(codec.encode(images, dtype))
    return images[rows] if rows is not None and dtype == pb.UINT8 else images
