"""Work counters of a run and the compute they add up to, from measured FLOPs."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class WorkCounters:
    steps: int = 0
    student_images: int = 0        # training images drawn from the data set
    student_forward: int = 0       # images the student ran forward (with or without grad)
    student_backward: int = 0      # images the student back-propagated
    teacher_images: int = 0        # images the teacher was asked about

    def add(self, batch: int, out) -> None:
        self.steps += 1
        self.student_images += batch
        self.student_forward += out.student_forward
        self.student_backward += out.student_backward
        self.teacher_images += out.teacher_images

    def as_dict(self) -> dict:
        return asdict(self)


def compute_flops(work: WorkCounters, teacher_fwd: float, student_fwd: float, student_bwd: float,
                  loss: float = 0.0) -> float:
    """k*F_t + (N+k)*F_s + k*(B_s + L) per UNIX step, summed from what really ran.

    ``loss``: FLOPs per trained image of the distillation loss's own work, forward and
    backward (FitNet's regressor, CRD's embeddings and bank products; 0 for KD).
    """
    return (work.teacher_images * teacher_fwd + work.student_forward * student_fwd
            + work.student_backward * (student_bwd + loss))


def kd_flops(work: WorkCounters, teacher_fwd: float, student_fwd: float, student_bwd: float,
             loss: float = 0.0) -> float:
    """What the same loss on every image would have spent (conventional KD): N*(F_t + F_s + B_s + L)."""
    return work.student_images * (teacher_fwd + student_fwd + student_bwd + loss)
