"""Reductions of a model output, applied by the teacher's server after the forward pass.

A feature map is big (resnet32x4's stage1 is 64x32x32 floats an image); what a
feature-distillation loss compares is often much smaller: AT compares spatial
attention maps (C times fewer numbers), PKT/RKD/CRD pooled vectors. So a
request names, per output, a *key*:

    logits              the full tensor (reduction ``none``)
    stage3              the full feature map
    stage3.attention    stage3 reduced by ``attention`` on the server
    stage3.pool         stage3 reduced by ``pool``
    logits.top10        logits as a compact answer: the 10 largest and the rest's
                        log-mean-exp (``common.topk``), rebuilt to C values

``topK`` is a family (any K from 1 to the class count) and applies to logits
only; it is what the teacher's answer becomes, not something the student's own
features go through.

The student side applies the very same functions to the student's own
features, so they are plain differentiable tensor functions: no
``inference_mode`` or ``no_grad`` inside, and the result has the input's dtype
(sums run in at least float32). Both sides of the wire import this module.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

import torch

LOGITS = "logits"  # the output every teacher gives (its features are named by the model)
NONE = "none"
SEPARATOR = "."   # between an output's name and its reduction in a key
ATTENTION_P = 2   # AT (Zagoruyko & Komodakis, 2017) uses |f|^2


def _accumulating(t: torch.Tensor) -> torch.Tensor:
    """``t`` in a dtype that sums without overflow (float16/bfloat16 -> float32; float64 stays)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def none(f: torch.Tensor) -> torch.Tensor:
    """The tensor unchanged."""
    return f


def attention(f: torch.Tensor, p: int = ATTENTION_P) -> torch.Tensor:
    """AT's spatial attention map before normalisation: mean over channels of |f|^p.

    (N, C, H, W) -> (N, H, W). Only for 4-D feature maps.
    """
    if f.dim() != 4:
        raise ValueError(f"attention needs a 4-D feature map (N, C, H, W), got a {f.dim()}-D tensor "
                         f"{tuple(f.shape)}")
    a = _accumulating(f)
    a = a.pow(p) if p % 2 == 0 else a.abs().pow(p)
    return a.mean(dim=1).to(f.dtype)


def pool(f: torch.Tensor) -> torch.Tensor:
    """Global average over the spatial dims: (N, C, H, W) -> (N, C); an (N, D) feature unchanged."""
    if f.dim() == 2:
        return f
    if f.dim() != 4:
        raise ValueError(f"pool needs a 4-D feature map (N, C, H, W) or a 2-D (N, D) feature, got a "
                         f"{f.dim()}-D tensor {tuple(f.shape)}")
    return _accumulating(f).mean(dim=(2, 3)).to(f.dtype)


# name -> function of a batch (N, ...) -> a batch (N, ...); "none" first.
REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    NONE: none,
    "attention": attention,
    "pool": pool,
}
# What each reduction applies to, per image, for error messages.
APPLIES_TO = {NONE: "any output", "attention": "a (C, H, W) map",
              "pool": "a (C, H, W) map or a (D,) vector"}

TOP_K = "topK"   # the top-k family as a server lists it among its reductions (Describe)
_TOP_K = re.compile(r"top([1-9][0-9]{0,5})")


def top_k(reduction: str) -> int | None:
    """K of a top-k reduction (``"top10"`` -> 10); None for any other name."""
    m = _TOP_K.fullmatch(reduction)
    return int(m.group(1)) if m else None


def served() -> list[str]:
    """The reductions a server lists in Describe: each named one, then the top-k family."""
    return [*REDUCTIONS, TOP_K]


def reduce(reduction: str, f: torch.Tensor) -> torch.Tensor:
    """Apply the reduction called ``reduction`` to the batch ``f``."""
    k = top_k(reduction)
    if k is not None:
        from common.topk import TopK

        return TopK.from_logits(f, k).dense()
    try:
        fn = REDUCTIONS[reduction]
    except KeyError:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {list(REDUCTIONS)}") from None
    return fn(f)


def make_key(name: str, reduction: str = NONE) -> str:
    """``("stage3", "none") -> "stage3"``, ``("stage3", "attention") -> "stage3.attention"``."""
    return name if reduction == NONE else f"{name}{SEPARATOR}{reduction}"


def parse_key(key: str) -> tuple[str, str]:
    """``"stage3.attention" -> ("stage3", "attention")``; a key without a reduction gets ``"none"``.

    Output names hold no ``.`` (the server refuses such a model), so the first
    ``.`` separates; the reduction is not checked here (see ``check_key``).
    """
    name, sep, reduction = key.partition(SEPARATOR)
    return (name, reduction) if sep else (key, NONE)


def reduced_shape(reduction: str, per_image_shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The per-image shape (no batch dimension) after ``reduction``; ValueError if it cannot apply.

    Worked out by running the function itself on a meta tensor (no memory, no
    arithmetic), so a shape rule can never disagree with the function.
    """
    k = top_k(reduction)
    if k is not None:
        if len(per_image_shape) != 1 or k > per_image_shape[0]:
            raise ValueError(f"top{k} keeps {k} of a (C,) vector's values; the output is {tuple(per_image_shape)}")
        return tuple(per_image_shape)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {list(REDUCTIONS)}")
    probe = torch.empty((1, *per_image_shape), device="meta")
    return tuple(REDUCTIONS[reduction](probe).shape[1:])


def offered_keys(output_shapes: Mapping[str, tuple[int, ...]],
                 reductions: Iterable[str] = REDUCTIONS) -> dict[str, tuple[int, ...]]:
    """Every key a teacher with these outputs offers, with its per-image shape.

    Output by output (in order), each reduction that applies to it (``none``
    first, so the full outputs keep their names); the identities (``pool`` of a
    2-D output) included, so a loss may ask for ``X.pool`` whatever X is.
    """
    keys = {}
    for name, shape in output_shapes.items():
        for reduction in reductions:
            try:
                keys[make_key(name, reduction)] = reduced_shape(reduction, tuple(shape))
            except ValueError:
                continue
    return keys


def check_key(key: str, output_shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str]:
    """``parse_key`` plus checks; ValueError saying what is offered if the key names nothing."""
    name, reduction = parse_key(key)
    if name not in output_shapes:
        raise ValueError(f"unknown output {name!r} in key {key!r}: outputs are {list(output_shapes)}")
    k = top_k(reduction)
    if (reduction not in REDUCTIONS and k is None) or make_key(name, reduction) != key:
        raise ValueError(f"unknown reduction {reduction!r} in key {key!r}: write NAME for the full output "
                         f"or NAME.REDUCTION with REDUCTION one of {[r for r in REDUCTIONS if r != NONE]} "
                         f"or topK (logits only)")
    if k is not None:
        shape = tuple(output_shapes[name])
        if name != LOGITS or len(shape) != 1:
            raise ValueError(f"key {key!r}: top-k answers are for {LOGITS} only")
        if k > shape[0]:
            raise ValueError(f"key {key!r}: K = {k} is more than the teacher's {shape[0]} classes")
        return name, reduction
    try:
        reduced_shape(reduction, tuple(output_shapes[name]))
    except ValueError:
        raise ValueError(f"key {key!r}: {reduction} applies to {APPLIES_TO[reduction]} per image, and "
                         f"{name} is {tuple(output_shapes[name])}") from None
    return name, reduction
