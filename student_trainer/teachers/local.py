"""A teacher in this process (``local:CHECKPOINT``): the same model, no wire, for comparisons."""
from __future__ import annotations

import torch

from student_trainer.teachers.base import ServerStats, TeacherClient, TeacherInfo
from teacher_server.counters import ServerCounters
from teacher_server.model_runner import load_teacher


class LocalTeacher(TeacherClient):
    def __init__(self, checkpoint: str, *, device: str = "cpu", **_ignored):
        super().__init__()
        self.teacher = load_teacher(checkpoint, device=device)
        self.stats = ServerCounters()
        t = self.teacher
        self.info = TeacherInfo(t.name, t.arch, t.input_shape, t.num_classes, t.feature_names,
                                t.flops_per_image, max_batch_size=1 << 30)

    def describe(self) -> TeacherInfo:
        return self.info

    def _infer(self, images: torch.Tensor, outputs: list[str]):
        result, seconds = self.teacher.forward(images, outputs)
        self.stats.record(images=images.shape[0], bytes_in=0, bytes_out=0, seconds=seconds,
                          flops=images.shape[0] * self.teacher.flops_per_image)
        return result, 0, 0

    def server_stats(self) -> ServerStats:
        s = self.stats.snapshot()
        return ServerStats(images=s["images"], requests=s["requests"], forward_seconds=s["forward_seconds"],
                           source="in-process")
