"""Several training processes under ``torchrun``: the process group and the few collectives the trainer uses.

As in torchvision's ``references/classification/utils.py``: ``torchrun`` sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``init_distributed`` joins the
process group (gloo on the CPU, NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``).
Without them, or with a world of one, nothing is initialised and every helper
here is the identity, so a single process runs exactly as it did before DDP.

One student, P processes: ``--batch-size`` N, ``--k`` and ``--b`` describe the
global step; each rank draws N/P images (its share of each global batch,
``data_order.EpochSampler``), sends k/P of them to the teacher and mixes with
b/P (the policy's config scales itself: ``Method.for_rank``); ``check_world`` refuses what does not split.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from common.cli_errors import AlreadyReported
from student_trainer.method import Method

CLIENT_ID_LIMIT = 64  # the teacher server's longest client id


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """What torchrun says about this process (rank 0 of 1 when not started by it); initialises nothing."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(use_cuda: bool) -> DistInfo:
    """Join torchrun's process group: NCCL with one GPU per rank (``cuda:LOCAL_RANK``), else gloo."""
    info = env_info()
    if not info.enabled or dist.is_initialized():
        return info
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=info.rank, world_size=info.world_size)
    return info


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """Each rank's device: its own GPU (``cuda:LOCAL_RANK``) under torchrun, else ``device`` as asked."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    return not is_dist() or dist.get_rank() == 0


def save_on_master(save, *args, **kwargs) -> None:
    """``save(*args, **kwargs)`` on rank 0 only (torchvision's name)."""
    if is_main_process():
        save(*args, **kwargs)


def ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged over the ranks in backward), or itself in one
    process. BatchNorm stays per rank, its running statistics not broadcast at every forward:
    ``broadcast_buffers`` puts rank 0's on every rank where all must agree (evaluation, checkpoints)."""
    if not is_dist():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)  # rank 0's parameters and buffers at start only


def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the ranks (a new tensor, on ``tensor``'s device)."""
    if not is_dist():
        return tensor
    work = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks, in one all-reduce (what DDP does for its module).

    A parameter without a gradient counts as zeros in the flat buffer and keeps no gradient, so that the
    ranks, which run the same code, agree on which parameters have one.
    """
    if not is_dist():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    flat = all_reduce_sum(flat) / dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is not None:
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), indexed by rank, on every rank; ``[obj]`` in a single process.

    ``gather_objects(x)[0]`` is rank 0's ``x``: a broadcast.
    """
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def decided_on_master(decide: Callable[[], None]) -> None:
    """``decide()`` on rank 0 alone, the other ranks waiting for it (a check that writes must not race);
    an error it raises stops every rank, and rank 0 alone says it (the others raise ``AlreadyReported``)."""
    error = None
    if is_main_process():
        try:
            decide()
        except Exception as e:  # whatever it is, every rank must stop with it
            error = e
    if gather_objects(error is not None)[0]:
        raise error if error is not None else AlreadyReported("rank 0 reported the error")


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank."""
    if not is_dist():
        return
    for buffer in module.buffers():
        work = buffer.detach().to(_comm_device(), copy=True)
        dist.broadcast(work, src=src)
        with torch.no_grad():
            buffer.copy_(work.to(buffer.device))


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- what each rank does of a global step ------------------------------------------------------------
def check_world(method: Method, client_id: str | None, world_size: int) -> None:
    """What cannot be split over ``world_size`` processes, as one line (the policy's config says what of
    its own does not split)."""
    if world_size == 1:
        return
    method.for_rank(world_size)
    for part in method.parts():
        if part.per_image_state:
            raise ValueError(f"{part.per_image_state} by data-set index, which would differ on each of the "
                             f"{world_size} processes: train it in one process (--nproc_per_node=1)")
    if client_id and len(client_id) + len(f"-rank{world_size - 1}") > CLIENT_ID_LIMIT:
        raise ValueError(f"--client-id gets -rank<R> appended on each of the {world_size} processes and must "
                         f"then stay within {CLIENT_ID_LIMIT} characters; shorten it")


def rank_name(given: str | None, info: DistInfo) -> str:
    """``NAME-rankR``: NAME the one given or one rank 0 made up, so the ranks' names share a prefix."""
    return f"{gather_objects(given or uuid.uuid4().hex)[0]}-rank{info.rank}"


def eval_shard(dataset: Dataset, info: DistInfo) -> Dataset:
    """This rank's part of the test set (every P-th image from its rank on): disjoint, all covered."""
    if not info.enabled:
        return dataset
    return Subset(dataset, range(info.rank, len(dataset), info.world_size))


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Figures averaged over the ranks (one some rank lacks is averaged over those that have it)."""
    every = gather_objects(values)
    if len(every) == 1:
        return values
    keys = list(dict.fromkeys(k for p in every for k in p))
    return {k: sum(p[k] for p in every if k in p) / sum(k in p for p in every) for k in keys}
