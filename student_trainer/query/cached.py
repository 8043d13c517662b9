"""Beyond the paper: every image every step, each teacher answer reused for R visits of the image."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from student_trainer.engine.timing import NULL_TIMER
from student_trainer.config import setting
from student_trainer.query.base import PolicyConfig, QueryPolicy, unmixed


@dataclass(frozen=True)
class CachedConfig(PolicyConfig):
    refresh_every: int = setting(2, "cached: ask the teacher about each image once every R visits "
                                 "(1: every time, = KD)", flag="--refresh-every", metavar="R")

    def __post_init__(self):
        super().__post_init__()
        if self.refresh_every < 1:
            raise ValueError(f"--refresh-every must be at least 1, got {self.refresh_every}")


class RememberedAnswers(QueryPolicy):
    """Every image trains every step; its teacher answer is refreshed once every R visits.

    Beyond the paper. UNIX-KD pays a no-grad pass over all N images each step and
    still asks the teacher about k of them; here each answer is asked for once and
    reused for R visits of the same image (another crop and flip of it: the answer
    is for the image as it was augmented then). No uncertainty pass, no mixing;
    the teacher sees about N/R images a step after the first epoch, when every
    image is new. Image i is due when ``(visits + i) % R == 0``, so the refreshes
    are spread over the steps instead of falling in one epoch. R = 1 is KD exactly.
    """
    name = "cached"
    about = ("every image, unmixed; each image's teacher answer is asked for once every --refresh-every "
             "visits and reused in between (beyond the paper)")
    reads_weights = False
    config_type = CachedConfig
    per_image_state = "--query cached remembers each training image's answer"

    def __init__(self, config: CachedConfig | None = None, dataset_size: int = 0, context=None):
        super().__init__(config, dataset_size, context)
        if dataset_size < 1:
            raise ValueError("--query cached needs the training set's size")
        self.refresh = self.config.refresh_every
        self.visits = torch.zeros(dataset_size, dtype=torch.long)
        self.answered = torch.zeros(dataset_size, dtype=torch.bool)
        self.store: dict[str, torch.Tensor] = {}

    @property
    def teacher_images_per_batch(self) -> int:
        return round(self.batch_size / self.refresh)

    def select(self, student, images, labels, indices, timer=NULL_TIMER, views=None):
        with timer.phase("mixing"):
            idx = indices.cpu()
            ask = ~self.answered[idx] | ((self.visits[idx] + idx) % self.refresh == 0)
            self.visits[idx] += 1
            reuse = idx[~ask]
            known = {key: stored[reuse] for key, stored in self.store.items()} if len(reuse) else {}
            q = unmixed(images, labels, indices, views=views, ask=ask.to(images.device), known=known)
            q.parts = {"teacher_fraction": q.teacher_rows / max(images.shape[0], 1)}
            return q

    def complete(self, query, answer):
        if query.ask is None or not answer and not query.known:
            return answer
        ask = query.ask.cpu()
        idx = query.indices.cpu()[ask]
        full = {}
        for key, fresh in answer.items():
            fresh = fresh.cpu()
            if key not in self.store:
                self.store[key] = torch.zeros(len(self.visits), *fresh.shape[1:], dtype=fresh.dtype)
            self.store[key][idx] = fresh
            out = torch.empty(len(ask), *fresh.shape[1:], dtype=fresh.dtype)
            out[ask] = fresh
            if key in query.known:
                out[~ask] = query.known[key].to(fresh.dtype)
            full[key] = out
        for key, remembered in query.known.items():
            if key not in full:  # nothing asked this step: every row remembered
                full[key] = remembered
        self.answered[idx] = True
        return full

    def state_dict(self):
        return {**super().state_dict(), "visits": self.visits.clone(), "answered": self.answered.clone(),
                "store": {k: v.clone() for k, v in self.store.items()}}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.visits.copy_(state["visits"])
        self.answered.copy_(state["answered"])
        self.store = {k: v.clone() for k, v in state["store"].items()}
