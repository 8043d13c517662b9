"""One training step: a query policy picks the images, the teacher answers, the losses score them.

``Distiller`` is an ``nn.Module`` (as mdistiller's distillers are) whose
learnable parameters are its loss's own modules (regressors, embeddings); the
student is trained beside it. A step has two halves: ``prepare`` (the policy
chooses, the images go to the teacher) and ``train_on`` (the student's forward,
the wait for the answer, the losses), which returns the student's predictions
and a dict of its losses.

Inside a step the teacher works while the student does: the images go out as
soon as the policy has chosen them (``TeacherClient.submit``), the student's
forward runs, and the step blocks only where the loss needs the answer. The
result is bit-identical to asking first and computing after (``serial``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from common.features import capture_features, feature_names
from common.flops import count_flops
from common.reductions import NONE, offered_keys
from common.views import Views
from student_trainer.distill.base import LOGITS, DistillBatch, DistillLoss, ModelShapes, StepContext
from student_trainer.distill.functional import mixed_ce
from student_trainer.engine.steps_in_flight import SentStep, completed
from student_trainer.engine.timing import NULL_TIMER, PhaseTimer
from student_trainer.method import Method
from student_trainer.query import PolicyContext, Query, QueryPolicy


@dataclass
class StepOutput:
    """A trained step: the loss to back-propagate, its parts as numbers for the log (``loss`` first), the
    work it took."""
    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)
    student_forward: int = 0
    student_backward: int = 0
    teacher_images: int = 0
    logits: torch.Tensor | None = None                            # the student's predictions
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # each term, as weighted in ``loss``


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, teacher, policy: QueryPolicy, loss: DistillLoss, *,
                 ce_weight: float, timer: PhaseTimer = NULL_TIMER, serial: bool = False,
                 asked: dict[str, str] | None = None):
        super().__init__()
        self.loss = loss
        self.teacher, self.policy = teacher, policy  # the teacher's client and the query policy
        # Not submodules, so the student is saved apart from the loss's modules: the student, and what the
        # training forward runs through (the student, or DDP around it).
        self._models = {"student": student, "forward": student}
        self.ce_weight, self.timer, self.serial = ce_weight, timer, serial
        # each key the loss reads -> the key asked of the teacher (``logits.top10`` for ``logits``: top-k answers)
        self.asked = asked or {o.key: o.key for o in loss.teacher_outputs()}
        self.keys = list(self.asked.values())
        self.features = loss.student_features()

    def train_through(self, wrapper: nn.Module) -> None:
        """Run the training forward through ``wrapper`` (DistributedDataParallel around the student), so its
        gradients are averaged over the ranks; the uncertainty pass and the feature hooks stay on the student."""
        self._models["forward"] = wrapper

    @property
    def student(self) -> nn.Module:
        return self._models["student"]

    @property
    def images_per_batch(self) -> int:
        """k: images of a full batch the teacher is asked about (N for --query all, 0 without a teacher)."""
        if not self.keys:
            return 0
        return self.policy.teacher_images_per_batch

    def prepare(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                views: Views | None = None, drawn: Views | None = None) -> SentStep:
        """Choose the step's images and send them to the teacher; the answer is waited for in ``train_on``.
        ``drawn``: the views drawn, where the policy's loader lookahead rendered ``views`` in their place."""
        if drawn is None:
            q = self.policy.select(self.student, images, labels, indices, self.timer, views=views)
        else:
            q = self.policy.select(self.student, images, labels, indices, self.timer, views=drawn, rendered=views)
        return SentStep(q, images.shape[0], self._ask(q), self._recheck(q))

    def _recheck(self, q: Query):
        """Ask the teacher again about the rows whose stored answers the policy checks (``--verify-store``)."""
        if not self.keys or not q.verify_rows:
            return None
        with self.timer.phase("teacher"):
            return self.teacher.submit(q.verify_images(), self.keys, views=q.verify_views(), verify=True)

    def _ask(self, q: Query):
        if not self.keys:
            return None
        if q.teacher_rows == 0:  # every answer remembered (--query cached)
            return completed({})
        images = q.asked_images()
        with self.timer.phase("teacher"):  # a remote teacher's submit returns at once; an in-process one answers
            answer = self.teacher.submit(images, self.keys, views=q.asked_views())
            if self.serial:
                try:
                    answer.result()  # the wait, here and counted as the teacher's
                except Exception:  # it stays in the future: the step raises it where it needs the answer
                    pass
            return answer

    def resend(self, step: SentStep) -> None:
        """Ask again for an answer a saved run never got (the teacher was gone, or the run stopped)."""
        if step.answer is None and self.keys:
            step.answer = self._ask(step.query)

    def train_on(self, step: SentStep, context: StepContext = StepContext(), while_waiting=None) -> StepOutput:
        """The student's forward (while the teacher works), then ``while_waiting()`` if the answer is not in
        yet (work that changes no result: the next batch's data), then the wait, then the loss."""
        q = step.query
        with self.timer.phase("student"), capture_features(self.student, self.features) as feats:
            logits = self._models["forward"](q.images)
        if while_waiting is not None and step.answer is not None and not step.answer.done():
            while_waiting()
        with self.timer.phase("teacher"):
            answers = self.policy.complete(q, step.wait())
            if step.recheck is not None:
                self.policy.check(q, step.recheck.result())
            answers = {read: answers[asked].to(logits.device) for read, asked in self.asked.items()}
        with self.timer.phase("student"):
            l_ce = mixed_ce(logits, q.labels_a, q.labels_b, q.mix)
            terms = self.loss(DistillBatch(logits, answers, dict(feats), q.labels_a, q.labels_b, q.mix, q.indices,
                                           context))
            ce = self.ce_weight * l_ce
            total = ce + sum(terms.values(), torch.zeros((), device=logits.device))
        k = q.images.shape[0]
        values = torch.stack([total.detach(), l_ce.detach(), *(t.detach() for t in terms.values())]).tolist()
        parts = dict(zip(["loss", "loss_ce", *terms], values)) | q.parts  # one read of the device a step
        return StepOutput(total, parts, q.choosing_forward + k, k, q.teacher_rows if self.keys else 0,
                          logits=logits, losses={"loss_ce": ce, **terms})

    def student_buffers(self) -> dict[str, torch.Tensor]:
        """The student's BN statistics: its forward runs before the teacher's answer is in, so a
        teacher that never answers leaves them one forward ahead of a clean save."""
        return {n: b.clone() for n, b in self.student.named_buffers()}

    def restore_student_buffers(self, saved: dict[str, torch.Tensor]) -> None:
        buffers = dict(self.student.named_buffers())
        with torch.no_grad():
            for name, value in saved.items():
                buffers[name].copy_(value)

    def training_state(self) -> dict:
        """What a resumed run needs beyond the student: the policy's RNG, the loss's modules and state."""
        return {"policy": self.policy.state_dict(), "loss": self.loss.state_dict()}

    def load_training_state(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.loss.load_state_dict(state["loss"])


def student_shapes(student: nn.Module, input_shape: tuple[int, ...], device) -> dict[str, tuple[int, ...]]:
    """Per-image shape of the student's logits and of every named feature (one eval-mode probe)."""
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad(), capture_features(student, feature_names(student)) as feats:
            logits = student(torch.zeros(2, *input_shape, device=device))
    finally:
        student.train(was_training)
    return {LOGITS.key: tuple(logits.shape[1:]), **{n: tuple(f.shape[1:]) for n, f in feats.items()}}


def loss_flops_per_image(loss: DistillLoss, shapes: ModelShapes, device, batch: int = 4) -> float:
    """The loss's own FLOPs per trained image, forward and backward, measured on a copy with random inputs."""
    probe = copy.deepcopy(loss).train()  # a copy: CRD's bank and generator must not move
    gen = torch.Generator().manual_seed(0)

    def rand(shape, grad=False):
        return torch.randn(batch, *shape, generator=gen).to(device).requires_grad_(grad)

    labels = torch.zeros(batch, dtype=torch.long, device=device)
    inputs = DistillBatch(rand(shapes.student[LOGITS.key], True), {o.key: rand(shapes.teacher[o.key])
                                                                for o in probe.teacher_outputs()},
                          {f: rand(shapes.student[f], True) for f in probe.student_features()}, labels, labels,
                          torch.zeros(batch, device=device), torch.arange(batch, device=device))

    def step():
        total = sum(probe(inputs).values(), torch.zeros((), device=device))
        if total.requires_grad:
            total.backward()
    return count_flops(step) / batch


def build_distiller(method: Method, student: nn.Module, teacher, *, input_shape, num_classes: int,
                    dataset_size: int, device, timer: PhaseTimer = NULL_TIMER, serial: bool = False, stored=None,
                    store=None) -> Distiller:
    """The method's policy and loss, built for these models' shapes and feature pairs (``stored``: the
    training split in memory; ``store``: the replay store)."""
    info = teacher.describe() if teacher is not None else None
    t_shapes = offered_keys(info.output_shapes, info.reductions or [NONE]) if info else {}
    shapes = ModelShapes(student_shapes(student, input_shape, device), t_shapes, num_classes, dataset_size)
    loss = method.build_loss(shapes)
    asked = method.answer_keys(loss, info.num_classes if info else num_classes)
    context = PolicyContext(stored=stored, store=store, teacher_sha256=info.weights_sha256 if info else None,
                            keys=tuple(asked.values()), classes=info.num_classes if info else num_classes)
    policy = method.build_policy(dataset_size, context)
    distiller = Distiller(student, teacher, policy, loss, ce_weight=method.ce_weight_for(loss),
                          timer=timer, serial=serial, asked=asked).to(device)
    distiller.flops_per_image = loss_flops_per_image(distiller.loss, shapes, device)
    return distiller
