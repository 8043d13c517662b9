"""A teacher in this process (``local:CHECKPOINT``): the same model, no wire, for comparisons.

``local:PATH`` reads our own checkpoint; another project's state dict (or
``.safetensors`` file) names its network in the query:
``local:PATH?arch=resnet56&num_classes=100&input_shape=3,32,32`` (``input_shape``
defaults to 3,32,32), as ``--arch --num-classes --input-shape`` do for
``python -m teacher_server``; ``use_ema=1`` is its ``--use-ema``.
"""
from __future__ import annotations

import threading
from urllib.parse import parse_qs

import torch

from common.reductions import served
from student_trainer.teachers.in_process import InProcessTeacher
from student_trainer.teachers.types import ServerStats, TeacherInfo


def _flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(f"expected 0 or 1, got {text!r}")
    return text == "1"


def parse_local_url(url: str) -> tuple[str, dict]:
    """``local:PATH[?arch=A&num_classes=C&input_shape=C,H,W&use_ema=1]`` -> (PATH, load_teacher's options)."""
    from common.cli_errors import parse_shape

    path, _, query = url.split(":", 1)[1].partition("?")
    if not path:
        raise ValueError(f"teacher URL {url!r} names no checkpoint; use local:PATH")
    try:
        given = {key: values[-1] for key, values in parse_qs(query, strict_parsing=bool(query)).items()}
    except ValueError:
        given = {"?": query}
    unknown = sorted(set(given) - {"arch", "num_classes", "input_shape", "use_ema"})
    if unknown:
        raise ValueError(f"teacher URL {url!r}: unknown option {unknown[0]!r}; a local: teacher takes "
                         "?arch=NAME&num_classes=N&input_shape=C,H,W&use_ema=1")
    options = {"arch": given.get("arch"), "num_classes": None, "input_shape": None, "use_ema": False}
    for key, convert in (("num_classes", int), ("input_shape", parse_shape), ("use_ema", _flag)):
        if key in given:
            try:
                options[key] = convert(given[key])
            except Exception as e:  # ValueError, argparse.ArgumentTypeError
                raise ValueError(f"teacher URL {url!r}: {key}: {e}") from None
    return path, options


class LocalTeacher(InProcessTeacher):
    """A checkpoint run here, in the caller's thread. No connection at all, so none of the trainer's
    teacher-connection flags applies (``uses`` is empty)."""

    @classmethod
    def from_url(cls, url: str, *, device: str = "cpu", **_wire) -> LocalTeacher:
        """``device``: where this process computes, and so the teacher. The wire's options (dtype,
        timeouts) mean nothing without a wire."""
        path, options = parse_local_url(url)
        return cls(path, device=device, **options)

    def __init__(self, checkpoint: str, *, device: str = "cpu", arch: str | None = None,
                 num_classes: int | None = None, input_shape: tuple[int, int, int] | None = None,
                 use_ema: bool = False, **_ignored):
        from common.teacher_model import load_teacher  # torchvision's models: only for a local teacher

        super().__init__()
        self.teacher = load_teacher(checkpoint, arch=arch, num_classes=num_classes, input_shape=input_shape,
                                    device=device, use_ema=use_ema)
        # What this process's teacher ran, for server_stats (calls may come from several threads).
        self._counts_lock = threading.Lock()
        self._requests = self._images = 0
        self._forward_seconds = 0.0
        t = self.teacher
        self.info = TeacherInfo(t.name, t.arch, t.input_shape, t.num_classes, t.feature_names,
                                t.flops_per_image, max_batch_size=1 << 30, output_shapes=dict(t.output_shapes),
                                reductions=served(), dataset=t.dataset,
                                weights_sha256=t.weights_sha256)

    def describe(self) -> TeacherInfo:
        return self.info

    def _infer(self, images: torch.Tensor, outputs: list[str]):
        result, seconds = self.teacher.forward(images, outputs)
        with self._counts_lock:
            self._requests += 1
            self._images += images.shape[0]
            self._forward_seconds += seconds
        # Ordinary tensors: inference-mode ones cannot enter autograd (FitNet, CRD).
        return {k: v.clone() for k, v in result.items()}, 0, 0

    def server_stats(self) -> ServerStats:
        with self._counts_lock:
            return ServerStats(images=self._images, requests=self._requests, forward_seconds=self._forward_seconds,
                               source="in-process", per_client=True)  # this process's own teacher
