"""A served teacher as a PyTorch module, for a training loop of one's own (timm's tasks included).

``TeacherModule(url)`` opens the teacher at ``url`` (any URL ``student_trainer.teachers.connect``
takes: ``grpc://HOST:PORT``, ``grpcs://``, ``triton://HOST:PORT/MODEL``, ``local:PATH``) and is an
``nn.Module`` whose forward is the teacher's answer::

    with TeacherModule("grpc://127.0.0.1:50051") as teacher:
        for images, labels in loader:
            coming = teacher.submit(images)          # on the wire while the student computes
            student_logits = student(images)
            teacher_logits = coming.result()         # the input's device and dtype
            ...

or, with timm: ``timm.task.LogitDistillationTask(student, teacher_model=TeacherModule(url), ...)``.

The module holds no parameters and no buffers: the teacher is elsewhere, so ``.to()``, ``.half()``,
``eval()`` and ``train()`` change nothing it uses, its state dict is empty, and an optimiser given
``task.parameters()`` finds nothing of it. Its answers never need gradients.

Images go to the teacher as they are given: normalised as the teacher expects (``pretrained_cfg``'s
``mean`` and ``std`` say how; timm's ``DistillationTeacher`` reads them to renormalise the student's
input where the two differ).
"""
from __future__ import annotations

import json
from concurrent.futures import Future
from typing import Sequence

import torch
from torch import nn

from common.data import IMAGENET_MEAN, IMAGENET_STD, PUBLISHED_NORMALISATION
from common.reductions import LOGITS, SEPARATOR
from student_trainer.teachers import TeacherClient, TeacherInfo, connect
from student_trainer.teachers.errors import TeacherRefused, TeacherUnavailable, one_line
from student_trainer.teachers.types import ClientCounters, ServerStats, TeacherFuture

# How this project's image folders are evaluated (common.image_folders, common.image_files): the short
# side resized to size / 0.875 (bilinear) and the centre cropped; timm's data config reads these.
INTERPOLATION = "bilinear"
CROP_PCT = 0.875

Normalisation = tuple[tuple[float, ...], tuple[float, ...]]


def teacher_normalisation(info: TeacherInfo) -> Normalisation | None:
    """(mean, std) the teacher says its inputs are normalised with, or None where it does not say: the
    split it serves (its view settings, or a data set of fixed normalisation by name), else the data set it
    was trained on where that one's normalisation is fixed (``common.data.PUBLISHED_NORMALISATION``)."""
    if info.data is not None and info.data.view_settings:
        try:
            settings = json.loads(info.data.view_settings)
        except ValueError:
            settings = {}
        if settings.get("mean") and settings.get("std"):
            return tuple(map(float, settings["mean"])), tuple(map(float, settings["std"]))
    for name in (info.data.name if info.data is not None else None, info.dataset):
        key = (name or "").lower().replace("_", "-")
        if key in PUBLISHED_NORMALISATION:
            return PUBLISHED_NORMALISATION[key]
    return None


def _per_channel(values, channels: int, what: str) -> tuple[float, ...]:
    values = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{what} has {len(values)} values; the teacher takes {channels}-channel images: "
                         f"give 1 or {channels}")
    return values


def resolve_normalisation(info: TeacherInfo, mean=None, std=None) -> tuple[Normalisation, str]:
    """((mean, std), where they came from) for ``pretrained_cfg``: the teacher's own where it says (given
    values that differ are refused), else ``mean``/``std``, else ImageNet's for 3-channel images, else 0.5."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    channels = info.input_shape[0] if info.input_shape else 3
    given = None
    if mean is not None:
        given = (_per_channel(mean, channels, "mean"), _per_channel(std, channels, "std"))
        if min(given[1]) <= 0:
            raise ValueError(f"std must be > 0, got {given[1]}")
    said = teacher_normalisation(info)
    if said is not None:
        said = (_per_channel(said[0], channels, "the teacher's mean"), _per_channel(said[1], channels,
                                                                                   "the teacher's std"))
        if given is not None and not all(abs(a - b) <= 1e-6 for a, b in zip(given[0] + given[1], said[0] + said[1])):
            raise ValueError(f"the teacher says its images are normalised with mean {said[0]}, std {said[1]}; "
                             f"mean {given[0]}, std {given[1]} were given: leave mean and std out")
        return said, "teacher"
    if given is not None:
        return given, "arguments"
    if channels == 3:
        return (IMAGENET_MEAN, IMAGENET_STD), "imagenet default"
    return ((0.5,) * channels, (0.5,) * channels), "0.5 default"


def afresh(error: TeacherUnavailable | TeacherRefused, prefix: str = "") -> Exception:
    """The same error as a new exception of its kind (raised ``from None``: one line, no worker's or gRPC's
    traceback under it); ``prefix`` goes before a ``TeacherUnavailable``'s message."""
    if isinstance(error, TeacherRefused):
        return TeacherRefused(error.url, error.what, error.code(), error.full_details)
    return TeacherUnavailable(prefix + one_line(error))


def open_teacher(url: str, outputs: list[str], options: dict) -> tuple[TeacherClient, TeacherInfo]:
    """``connect(url, **options)`` and the teacher's description, every failure in one line: a teacher out of
    reach (``TeacherUnavailable``), a bad URL or option, an output key the teacher does not have."""
    try:
        client = connect(url, **options)
    except (TeacherUnavailable, TeacherRefused) as e:
        raise afresh(e, f"cannot reach the teacher at {url}: ") from None
    except ValueError as e:
        raise ValueError(one_line(e)) from None
    try:
        if client.takes_recipes:
            raise ValueError("a TeacherModule sends pixels: send='recipes' needs the trainer's view recipes; "
                             "leave send out")
        try:
            info = client.describe()
        except (TeacherUnavailable, TeacherRefused) as e:
            raise afresh(e, f"cannot reach the teacher at {url}: ") from None
        offered = [LOGITS, *info.feature_names]  # a key's reduction is the server's to check
        for key in outputs:
            if key.split(SEPARATOR, 1)[0] not in offered:
                raise ValueError(f"the teacher at {client.url} has no output {key!r}; it offers {', '.join(offered)}")
    except BaseException:
        client.close()
        raise
    return client, info


def check_images(images, input_shape: tuple[int, ...]) -> None:
    """What the teacher takes, checked here: [N, C, H, W] in its shape, N >= 1, floating point; else one line
    that says what it expects."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"a TeacherModule takes a tensor of images, got {type(images).__name__}")
    shape = tuple(input_shape) or (-1, -1, -1)  # -1: a size the teacher does not fix
    expected = "[N, " + ", ".join(str(d) if d > 0 else "*" for d in shape) + "]"
    if images.dim() != 1 + len(shape):
        raise ValueError(f"teacher expects {expected}; got a {images.dim()}-D tensor {list(images.shape)}"
                         + (" (add the batch dimension: images[None])" if images.dim() == len(shape) else ""))
    if any(want > 0 and got != want for got, want in zip(images.shape[1:], shape)):
        raise ValueError(f"teacher expects {expected}; got {list(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"teacher expects {expected} with N >= 1; got an empty batch")
    if not images.is_floating_point():
        raise TypeError(f"teacher expects floating-point images (normalised with pretrained_cfg's mean and std); "
                        f"got {images.dtype}: convert with images.float() and normalise")


class TeacherModule(nn.Module):
    """The teacher at ``url`` as a module: ``forward(images)`` is its answer, in the input's device and dtype.

    ``outputs``: the keys asked (``"logits"``, a feature such as ``"stage3"``, a reduced one such as
    ``"stage3.pool"``, ``"logits.top10"``); with one key ``forward`` returns its tensor, with several a
    dict {key: tensor}. ``mean``/``std``: what the teacher's inputs are normalised with, where the
    teacher does not say (it says when it was trained on a data set of fixed normalisation, or serves
    its training split); neither given nor said, ImageNet's for 3-channel images, else 0.5 for every
    channel (mean and std: [0, 1] pixels to [-1, 1]). They go into ``pretrained_cfg`` only: images are
    sent as given. ``connection_options``: ``connect``'s (``wire_dtype``, default float16 on the wire;
    ``timeout``, ``connect_timeout``, ``max_wait``, ``token_file``, ``tls_ca``, ``client_id``).

    Attributes as a timm model has them: ``pretrained_cfg`` (``default_cfg``), ``num_classes``,
    ``in_chans``; and ``info`` (the teacher's ``TeacherInfo``), ``counters`` (what this module's client
    sent and received, to set beside ``server_stats()``). Closes with ``close()`` or a ``with`` block.
    """

    def __init__(self, url: str, outputs: str | Sequence[str] = (LOGITS,), *, mean=None, std=None,
                 **connection_options):
        super().__init__()
        self.outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        self._single = isinstance(outputs, str) or len(self.outputs) == 1
        if not self.outputs or not all(isinstance(o, str) and o for o in self.outputs):
            raise ValueError(f"outputs must be one or more output keys such as 'logits', got {outputs!r}")
        self._client: TeacherClient | None = None
        client, self.info = open_teacher(url, self.outputs, connection_options)
        try:
            (mean, std), self.normalisation_source = resolve_normalisation(self.info, mean, std)
        except ValueError:
            client.close()
            raise
        self.url = client.url
        self._client = client
        self._counters = client.counters
        self.num_classes = self.info.num_classes
        self.in_chans = self.info.input_shape[0] if self.info.input_shape else None
        self.pretrained_cfg = {
            "architecture": self.info.arch, "tag": self.info.model_name, "num_classes": self.info.num_classes,
            "input_size": tuple(self.info.input_shape), "fixed_input_size": True, "mean": mean, "std": std,
            "interpolation": INTERPOLATION, "crop_pct": CROP_PCT, "crop_mode": "center"}

    # --- what timm reads ------------------------------------------------------
    @property
    def default_cfg(self) -> dict:
        """timm's older name for ``pretrained_cfg``."""
        return self.pretrained_cfg

    # --- asking ---------------------------------------------------------------
    @property
    def counters(self) -> ClientCounters:
        """What this module's client sent and received (images, requests, bytes, seconds waited); readable
        after ``close``."""
        return self._counters

    @property
    def closed(self) -> bool:
        return self._client is None

    def _open_client(self) -> TeacherClient:
        if self._client is None:
            raise RuntimeError(f"the TeacherModule of {self.url} is closed; make a new TeacherModule")
        return self._client

    @torch.no_grad()
    def submit(self, images: torch.Tensor) -> Future:
        """At once, a future of what ``forward(images)`` returns: the teacher works while the caller does
        (the student's forward). ``images`` must not change until the future is done. The time spent
        blocked in its ``result`` counts in ``counters.wait_seconds``."""
        client = self._open_client()
        check_images(images, self.info.input_shape)
        device, dtype = images.device, images.dtype
        asked = client.submit(images.detach(), self.outputs)
        answer = TeacherFuture(lambda: self._counters)

        def done(future: Future) -> None:
            error = future.exception()
            if error is not None:
                answer.set_exception(error)
                return
            try:
                result = {k: v.to(device=device, dtype=dtype) for k, v in future.result().items()}
                answer.set_result(result[self.outputs[0]] if self._single else result)
            except Exception as e:  # a device that went away: the caller's result() says so
                answer.set_exception(e)

        asked.add_done_callback(done)
        return answer

    def forward(self, images: torch.Tensor):
        """The teacher's answer about ``images`` ([N, C, H, W] in the teacher's shape, floating point,
        normalised as ``pretrained_cfg`` says): a tensor with one output key, a dict with several; on the
        images' device, in their dtype, without gradients. The teacher's errors come in one line:
        ``TeacherUnavailable`` (a ``ConnectionError``) or ``TeacherRefused``."""
        future = self.submit(images)
        try:
            return future.result()
        except (TeacherUnavailable, TeacherRefused) as e:
            raise afresh(e) from None  # one line, not the worker thread's traceback

    def server_stats(self) -> ServerStats:
        """The server's own counts (of this client's calls, where the server counts per client)."""
        return self._open_client().server_stats()

    # --- the end ----------------------------------------------------------------
    def close(self) -> None:
        """Let go of the connection; answers still on their way end in ``TeacherUnavailable``. Twice is once."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> TeacherModule:
        self._open_client()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def extra_repr(self) -> str:
        return (f"url={self.url!r}, outputs={self.outputs}, input_size={tuple(self.info.input_shape)}, "
                f"num_classes={self.num_classes}{', closed' if self.closed else ''}")
