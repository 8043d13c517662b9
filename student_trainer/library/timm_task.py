"""UNIX-KD as a timm training task: ``UnixDistillationTask``, ``LogitDistillationTask`` with the teacher asked
about the k most uncertain images of each batch, mixed, instead of all N.

    task = UnixDistillationTask(student, teacher_model=TeacherModule("grpc://HOST:PORT"), k=48,
                                temperature=4.0)
    result = task(images, labels)      # loss, output, task_loss, kd_loss, teacher_images
    result["loss"].backward()
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch
from timm.loss import create_classification_loss
from timm.task import LogitDistillationTask
from timm.task.distillation import DistillationTeacher
from timm.utils import unwrap_model
from torch import nn

from student_trainer.library.unix import UnixBatch, checked_knobs, unix_select


class UnixDistillationTask(LogitDistillationTask):
    """timm's ``LogitDistillationTask`` (its arguments, loss weighting and return dict) on UNIX-KD's batch.

    Each call the student scores all N images without gradients, the batch is sorted by uncertainty, each
    image mixed with a shuffled partner (the more certain, the more mixed), and only the k most uncertain
    mixed images go through timm's own ``LogitDistillationTask.forward``: the teacher is asked about those
    k (renormalised by ``DistillationTeacher`` where its mean/std differ from the student's), the student
    trains on them with timm's KL term at ``temperature`` and the task loss on their mixed labels.

    The mixed labels reach ``criterion`` as soft targets ``(k, classes)``, as after timm's ``Mixup``: without
    a ``criterion``, ``create_classification_loss(soft_targets=True, **criterion_kwargs)`` makes one
    (``SoftTargetCrossEntropy``); a given one must take probabilities (``nn.CrossEntropyLoss`` does).

    The UNIX knobs (keyword only): ``k`` images of each batch for the teacher; ``b`` the rank where mixing
    reaches half strength, ``w`` its sharpness; ``selection`` the uncertainty measure; ``uncertainty_bn``
    BatchNorm in the scoring pass; ``mix=False`` the no-mixing ablation; ``batch_size`` the full batch, to
    scale k and b for a smaller last one; ``seed`` the task's own generator (partners, lam), so a run
    repeats (None: torch's global one). ``unix_select`` says more.

    The result adds to timm's ``loss``, ``output`` (the student's logits for the k mixed images),
    ``task_loss`` and ``kd_loss``: ``teacher_images`` (an int: images sent to the teacher this step).
    ``last_batch`` holds the step's ``UnixBatch`` (which rows, their partners, weights, the scores).
    """

    def __init__(
            self,
            student_model: nn.Module,
            teacher_model: Union[str, nn.Module, DistillationTeacher],
            criterion: Optional[nn.Module] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            teacher_pretrained_path: Optional[str] = None,
            teacher_pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
            loss_type: str = 'kl',
            distill_loss_weight: Optional[float] = None,
            task_loss_weight: Optional[float] = None,
            temperature: float = 1.0,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
            *,
            k: int,
            b: float = 32.0,
            w: float = 10.0,
            selection: str = "entropy",
            uncertainty_bn: str = "train",
            mix: bool = True,
            batch_size: Optional[int] = None,
            seed: Optional[int] = 0,
    ):
        checked_knobs(k, batch_size or k, batch_size, b, w, selection, uncertainty_bn)  # fail before the teacher opens
        if criterion is None:
            criterion = create_classification_loss(**({"soft_targets": True} | (criterion_kwargs or {})))
        elif criterion_kwargs:
            raise ValueError(f"pass either an explicit criterion or criterion_kwargs, not both: {sorted(criterion_kwargs)}")
        super().__init__(student_model, teacher_model, criterion=criterion,
                         teacher_pretrained_path=teacher_pretrained_path,
                         teacher_pretrained_cfg_overlay=teacher_pretrained_cfg_overlay, loss_type=loss_type,
                         distill_loss_weight=distill_loss_weight, task_loss_weight=task_loss_weight,
                         temperature=temperature, device=device, dtype=dtype, verbose=verbose)
        _check_classes(student_model, teacher_model)
        self.k, self.b, self.w, self.selection, self.uncertainty_bn = k, float(b), float(w), selection, uncertainty_bn
        self.mix, self.batch_size = mix, batch_size
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.last_batch: Optional[UnixBatch] = None

    def select(self, input: torch.Tensor, target: torch.Tensor) -> UnixBatch:
        """This step's k mixed images, chosen by the student's scoring pass (on the student itself, not a
        DistributedDataParallel wrapper: no gradients, nothing to synchronise)."""
        return unix_select(unwrap_model(self.trainable_module), input, target, self.k, b=self.b, w=self.w,
                           selection=self.selection, uncertainty_bn=self.uncertainty_bn, mix=self.mix,
                           batch_size=self.batch_size, generator=self.generator)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, Any]:
        """UNIX-KD's step on ``input`` [N, C, H, W] and class indices ``target`` [N]: timm's logit distillation
        on the k selected mixed images, with their mixed labels as soft targets."""
        batch = self.select(input, target)
        classes = unwrap_model(self.trainable_module).num_classes
        result = super().forward(batch.images, batch.soft_targets(classes).to(batch.images.dtype))
        result["teacher_images"] = len(batch)
        self.last_batch = batch
        return result

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        """The generator's state, so that a resumed run draws the partners it would have."""
        return {} if self.generator is None or ema else {"unix_generator": self.generator.get_state()}

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        if state and "unix_generator" in state and self.generator is not None and not ema:
            self.generator.set_state(state["unix_generator"])

    def extra_repr(self) -> str:
        return (f"k={self.k}, b={self.b}, w={self.w}, selection={self.selection!r}, "
                f"uncertainty_bn={self.uncertainty_bn!r}, mix={self.mix}, temperature={self.temperature}")


def _check_classes(student: nn.Module, teacher) -> None:
    """A student and a teacher of different class counts, in one line (timm's KL would fail on the shapes)."""
    mine = getattr(unwrap_model(student), "num_classes", None)
    theirs = getattr(getattr(teacher, "model", teacher), "num_classes", None)
    if isinstance(mine, int) and isinstance(theirs, int) and mine != theirs:
        raise ValueError(f"the student has {mine} classes and the teacher {theirs}: build the student with "
                         f"num_classes={theirs}")

