"""Work counters of a run and the compute they add up to, from measured FLOPs; summed over the ranks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from common.flops import backward_flops_per_image, forward_flops_per_image
from student_trainer.engine.distributed import all_reduce_sum, gather_objects
from student_trainer.teachers import ClientCounters, ServerStats


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


def flops_per_image(student: nn.Module, input_shape, teacher, loss_flops: float) -> dict[str, float]:
    """Measured FLOPs per image of each kind of work a step does."""
    return {"student_forward": forward_flops_per_image(student, input_shape),
            "student_backward": backward_flops_per_image(student, input_shape),
            "teacher_forward": teacher.describe().flops_per_image if teacher else 0.0,
            "loss": loss_flops}


def costs(work: WorkCounters, flops: dict[str, float]) -> tuple[float, float]:
    """(what this run spent, what conventional KD would have spent) so far, in FLOPs."""
    per = (flops["teacher_forward"], flops["student_forward"], flops["student_backward"], flops["loss"])
    return compute_flops(work, *per), kd_flops(work, *per)


# --- one run's figures from the ranks' (each is the identity in one process) ---------------------------
def summed_work(work: WorkCounters) -> WorkCounters:
    """Images summed over the ranks; steps are global steps, which every rank counts once."""
    names = [f.name for f in fields(WorkCounters) if f.name != "steps"]
    totals = all_reduce_sum(torch.tensor([getattr(work, n) for n in names], dtype=torch.int64))
    return WorkCounters(steps=work.steps, **{n: int(v) for n, v in zip(names, totals.tolist())})


def summed_client(counters: ClientCounters | None) -> dict | None:
    """Requests, images and bytes summed over the ranks' teacher clients; ``wait_seconds`` their mean
    (each rank waits at the same time as the others, so the mean compares with the run's wall time)."""
    if counters is None:
        return None
    mine = counters.as_dict()
    every = gather_objects(mine)
    total = {k: sum(c[k] for c in every) for k in mine}
    total["wait_seconds"] /= len(every)
    return total


def summed_server(stats: ServerStats | None) -> ServerStats | None:
    """The server's counts of this run: summed over the ranks' client ids where it counts per client;
    a server-wide count (Triton, an older server) already covers every rank, so rank 0's is kept."""
    every = gather_objects(stats)
    if len(every) == 1 or any(s is None for s in every):
        return every[0]
    for s in every:
        if not s.available:
            return s
    if not all(s.per_client for s in every):
        return every[0]

    def total(name):
        values = [getattr(s, name) for s in every]
        return None if any(v is None for v in values) else sum(values)

    replicas = None
    if every[0].replicas:  # teacher replicas: each one's counts, summed over the ranks' client ids
        replicas = {name: None if any((s.replicas or {}).get(name) is None for s in every) else
                    {k: sum(s.replicas[name][k] for s in every) for k in every[0].replicas[name]}
                    for name in every[0].replicas}
    return ServerStats(images=total("images"), requests=total("requests"), bytes_in=total("bytes_in"),
                       bytes_out=total("bytes_out"), forward_seconds=total("forward_seconds"), per_client=True,
                       source=f"{every[0].source}, summed over the client ids of {len(every)} processes",
                       replicas=replicas, verify_images=total("verify_images"))
