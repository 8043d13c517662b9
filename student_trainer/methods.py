"""Training methods, one class each (as in mdistiller): ``ce``, ``kd``, ``unix``.

A method turns a batch into a loss and says how much work it cost: images the
student ran forward and backward, images the teacher was asked about.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from student_trainer.losses import kd_loss, mixed_ce
from student_trainer.mixing import scaled_for_batch, select_and_mix
from student_trainer.timing import PhaseTimer
from student_trainer.uncertainty import uncertainty


@dataclass
class StepOutput:
    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)
    student_forward: int = 0
    student_backward: int = 0
    teacher_images: int = 0


@dataclass
class MethodConfig:
    batch_size: int = 64
    k: int = 48
    b: float = 32
    w: float = 10.0
    selection: str = "entropy"
    T: float = 4.0
    ce_weight: float = 0.0
    kd_weight: float = 1.0
    uncertainty_bn: str = "batch"
    seed: int = 0


@contextmanager
def bn_mode(model: nn.Module, mode: str):
    """How BatchNorm behaves in the no-grad uncertainty pass.

    ``batch`` (default): normalise with the batch's own statistics, exactly as the
    training forward does, but leave the running statistics untouched (momentum 0
    for the pass), so each step updates them once, from the images trained on.
    ``train``: the reference implementation's behaviour: batch statistics, and the
    unmixed batch also updates the running statistics (twice per step in all).
    ``eval``: use the running statistics (noisy early in training).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    saved = [(m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in bns]
    if mode == "eval":
        model.eval()
    elif mode == "batch":
        model.train()
        for m in bns:
            m.momentum = 0.0
    elif mode == "train":
        model.train()
    else:
        raise ValueError(f"unknown --uncertainty-bn {mode!r}; choose batch, train or eval")
    try:
        yield
    finally:
        model.train(was_training)
        if mode == "batch":
            for m, momentum, tracked in saved:
                m.momentum = momentum
                if tracked is not None:
                    m.num_batches_tracked.copy_(tracked)


class Method:
    needs_teacher = True

    def __init__(self, student: nn.Module, teacher, cfg: MethodConfig, timer: PhaseTimer | None = None):
        self.student, self.teacher, self.cfg = student, teacher, cfg
        self.timer = timer or PhaseTimer()

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        with self.timer.phase("teacher"):
            return self.teacher.infer(images)["logits"].to(images.device)


class CE(Method):
    """Labels only: the baseline student, and how a teacher is trained."""
    needs_teacher = False

    def step(self, images, labels):
        with self.timer.phase("student"):
            logits = self.student(images)
            loss = F.cross_entropy(logits, labels)
        n = images.shape[0]
        return StepOutput(loss, {"loss_ce": loss.item()}, n, n, 0)


class KD(Method):
    """Conventional KD: the teacher sees every image (k = N, no mixing)."""

    def step(self, images, labels):
        cfg = self.cfg
        t_logits = self._teacher_logits(images)
        with self.timer.phase("student"):
            logits = self.student(images)
            l_kd = kd_loss(logits, t_logits, cfg.T)
            l_ce = F.cross_entropy(logits, labels)
            loss = cfg.kd_weight * l_kd + cfg.ce_weight * l_ce
        n = images.shape[0]
        return StepOutput(loss, {"loss_kd": l_kd.item(), "loss_ce": l_ce.item()}, n, n, n)


class UNIX(Method):
    """UNIX-KD: uncertainty pass on N images, the k most uncertain mixed ones to the teacher."""

    def __init__(self, student, teacher, cfg, timer=None):
        super().__init__(student, teacher, cfg, timer)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"])

    def step(self, images, labels):
        cfg = self.cfg
        n = images.shape[0]
        with self.timer.phase("uncertainty"), torch.no_grad(), bn_mode(self.student, cfg.uncertainty_bn):
            probs = F.softmax(self.student(images).float(), dim=1)
            scores = uncertainty(cfg.selection, probs, self.gen)
        with self.timer.phase("mixing"):
            k, b = scaled_for_batch(n, cfg.batch_size, cfg.k, cfg.b)
            lam = float(self.rng.beta(1.0, 1.0))
            perm = torch.randperm(n, generator=self.gen)
            mb = select_and_mix(images, labels, scores, k=k, b=b, w=cfg.w, lam=lam, perm=perm.to(images.device))
        t_logits = self._teacher_logits(mb.images)
        with self.timer.phase("student"):
            logits = self.student(mb.images)
            l_kd = kd_loss(logits, t_logits, cfg.T)
            l_ce = mixed_ce(logits, mb.labels_a, mb.labels_b, mb.mix)
            loss = cfg.kd_weight * l_kd + cfg.ce_weight * l_ce
        parts = {"loss_kd": l_kd.item(), "loss_ce": l_ce.item(), "lambda": lam,
                 "uncertainty_selected": scores[mb.selected].mean().item()}
        if len(mb.dropped):
            parts["uncertainty_dropped"] = scores[mb.dropped].mean().item()
        return StepOutput(loss, parts, n + k, k, k)


METHODS: dict[str, type[Method]] = {"ce": CE, "kd": KD, "unix": UNIX}
