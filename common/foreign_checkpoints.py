"""Teachers trained elsewhere: the checkpoint layouts that KD projects, torchvision, timm and the hub write.

``LAYOUTS`` is the registry: each entry is a plain function that gets what
``torch.load(weights_only=True)`` returned and gives back the state dict it
finds there, or None when the file is not in its layout. The first that
answers wins; a new layout is one more function.

    a .safetensors file         the Hugging Face hub's ``model.safetensors`` (timm's models there);
                                tensors only, read by ``safetensors`` without any pickle
    a bare state dict           torchvision's weight files, ``torch.save(model.state_dict())``, timm's
                                released ``.pth`` files
    {"model": state_dict, ...}  RepDistiller / CRD (``scripts/fetch_pretrained_teachers.sh``),
                                mdistiller's ``cifar_teachers.tar``, DeiT
    {"state_dict": ..., ...}    the UNIXKD reference code, pytorch/examples' ImageNet script, timm's
                                ``train.py`` (``checkpoint-N.pth.tar``, ``model_best.pth.tar``)
    {"net": ..., ...}           kuangliu/pytorch-cifar and the many scripts that follow it

timm's ``train.py`` also saves the EMA of the weights (``state_dict_ema``) and DeiT
``model_ema``: the trained weights are taken unless ``use_ema`` (``--use-ema``, as
timm's ``validate.py`` says it), and the layout's description says which was taken.

A ``module.`` prefix on every key (a model saved through ``nn.DataParallel`` or
DistributedDataParallel) and ``_orig_mod.`` (``torch.compile``) are stripped.
Such a file does not say what network it is, so the caller names it (``arch``,
``num_classes``, ``input_shape``) and the weights must then fit that zoo model
exactly (``load_state_strictly``). Our own format (``common.checkpoint``) is
recognised first and carries its own facts.

Names: our zoo is written afresh, so its parameter names are not RepDistiller's
(``stem.0.weight`` where RepDistiller has ``conv1.weight``), but every network
registers the same tensors in the same order. So a file whose names are not
ours is matched by position (``match_by_position``), and only when the two lists
agree tensor for tensor: the same count, the same shapes, the same kind
(``weight``, ``bias``, ``running_mean`` ...) at every place; anything else is
refused with the missing and unexpected names. Checked against RepDistiller's
own definitions for all 22 CIFAR architectures of the zoo: the logits agree
to float32 rounding.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from common.checkpoint import (CheckpointError, check_ours, is_ours, load_state_strictly, model_from_checkpoint,
                               read_checkpoint_file)

SAFETENSORS_SUFFIX = ".safetensors"
EMA_KEYS = {"state_dict": "state_dict_ema", "model": "model_ema"}
"""The EMA weights saved beside the trained ones: timm's ``train.py``, DeiT."""

log = logging.getLogger("common.foreign_checkpoints")

DEFAULT_INPUT_SHAPE = (3, 32, 32)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

LAYOUTS: dict[str, Callable[[Any], dict | None]] = {}


def layout(description: str):
    """Register a layout function under the description that error messages use."""
    def register(fn):
        LAYOUTS[description] = fn
        return fn
    return register


class SafetensorsFile(dict):
    """The tensors of a ``.safetensors`` file, marked so that its layout says where they came from."""


def read_weights_file(path: str | os.PathLike, map_location: str = "cpu"):
    """A ``.safetensors`` file's tensors (no pickle at all), else ``read_checkpoint_file`` (weights-only)."""
    path = Path(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        return read_checkpoint_file(path, map_location)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return SafetensorsFile(load_file(path, device=map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {' '.join(str(e).split())}") from None


def is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _under(obj, key: str) -> dict | None:
    return obj[key] if isinstance(obj, dict) and is_state_dict(obj.get(key)) else None


@layout("a safetensors file (the Hugging Face hub's model.safetensors)")
def safetensors_file(obj):
    return dict(obj) if isinstance(obj, SafetensorsFile) and obj else None


@layout("a bare state dict")
def bare(obj):
    return obj if is_state_dict(obj) else None


@layout("a {'model': state dict} file (RepDistiller / CRD, mdistiller, DeiT)")
def under_model(obj):
    return _under(obj, "model")


@layout("a {'state_dict': state dict} file (UNIXKD reference, pytorch/examples, timm's train.py)")
def under_state_dict(obj):
    return _under(obj, "state_dict")


@layout("a {'net': state dict} file (pytorch-cifar)")
def under_net(obj):
    return _under(obj, "net")


def find_state_dict(obj, source: str | os.PathLike = "checkpoint", use_ema: bool = False) -> tuple[str, dict]:
    """(the layout's description, its state dict with wrapper prefixes stripped), or one CheckpointError line.

    ``use_ema``: the EMA weights saved beside the trained ones (``EMA_KEYS``) instead of those.
    """
    emas = [key for key in EMA_KEYS.values() if _under(obj, key) is not None]
    if use_ema:
        if not emas:
            raise CheckpointError(f"{source} holds no EMA weights (no {' or '.join(map(repr, EMA_KEYS.values()))} "
                                  "state dict); leave out --use-ema")
        return f"the EMA weights under {emas[0]!r}", strip_wrapper_prefixes(obj[emas[0]])
    for description, find in LAYOUTS.items():
        state_dict = find(obj)
        if state_dict is not None:
            if emas:
                description += f"; the trained weights, not the EMA ones under {emas[0]!r} (--use-ema takes those)"
            return description, strip_wrapper_prefixes(state_dict)
    held = f"a dict with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{source} holds {held}; expected a unix-kd checkpoint or a state dict, bare or under "
                          "'model', 'state_dict' or 'net', or a .safetensors file")


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    """Drop ``module.`` / ``_orig_mod.`` when every key has it (DataParallel, torch.compile)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                stripped = True
    return state_dict


TRACKED = "num_batches_tracked"  # a BatchNorm counter: unused in eval mode, absent from pre-0.4.1 files


def match_by_position(model: nn.Module, state_dict: dict) -> tuple[dict | None, str]:
    """``state_dict`` renamed to the model's names by position, or (None, why not).

    Accepted only when, after dropping BatchNorm counters, both lists have the same
    length and agree at every position in shape and in the last part of the name.
    """
    own = [(k, v) for k, v in model.state_dict().items() if not k.endswith(TRACKED)]
    theirs = [(k, v) for k, v in state_dict.items() if not k.endswith(TRACKED)]
    if len(own) != len(theirs):
        return None, f"nor by position: {len(own)} tensors in the model, {len(theirs)} in the file"
    for i, ((ko, vo), (kt, vt)) in enumerate(zip(own, theirs)):
        if vo.shape != vt.shape or ko.rsplit(".", 1)[-1] != kt.rsplit(".", 1)[-1]:
            return None, (f"nor by position: tensor {i} is {kt} {tuple(vt.shape)} in the file, "
                          f"{ko} {tuple(vo.shape)} in the model")
    return {ko: vt for (ko, _), (_, vt) in zip(own, theirs)}, ""


def load_foreign_state(model: nn.Module, state_dict: dict, *, arch: str, source) -> str:
    """Load by name, or else by position (``match_by_position``); return which. Anything less is one error line."""
    own = set(model.state_dict())
    if set(state_dict) == own or set(state_dict) == {k for k in own if not k.endswith(TRACKED)}:
        load_state_strictly(model, state_dict, arch=arch, source=source)
        return "by name"
    renamed, why_not = match_by_position(model, state_dict)
    if renamed is None:
        load_state_strictly(model, state_dict, arch=arch, source=source, hint=why_not)  # raises, naming keys
    load_state_strictly(model, renamed, arch=arch, source=source)
    return "by position"


@dataclass
class LoadedModel:
    model: nn.Module
    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    layout: str
    dataset: str | None = None  # what it was trained on, where the file says (our checkpoints' meta)


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _check_agrees(path, ckpt: dict, arch, num_classes, input_shape) -> None:
    """Flags given for our own checkpoint are optional, but must say what the file says."""
    stored = {"--arch": ckpt["arch"], "--num-classes": int(ckpt["num_classes"]),
              "--input-shape": tuple(ckpt["input_shape"])}
    given = {"--arch": arch, "--num-classes": num_classes,
             "--input-shape": None if input_shape is None else tuple(input_shape)}
    for flag, value in stored.items():
        if given[flag] is not None and given[flag] != value:
            raise CheckpointError(f"{path} is a unix-kd checkpoint with {flag[2:]} {_show(value)}, but "
                                  f"{flag} {_show(given[flag])} was given; leave {flag} out (the file says it)")


def model_from_file(path: str | os.PathLike, *, arch: str | None = None, num_classes: int | None = None,
                    input_shape: tuple[int, int, int] | None = None, map_location: str = "cpu",
                    use_ema: bool = False) -> LoadedModel:
    """Our checkpoint (``arch``... optional, checked if given) or another project's (``arch``, ``num_classes`` needed);
    ``use_ema``: the EMA weights of a file that has them (timm's, DeiT's)."""
    from common.models import build_model

    obj = read_weights_file(path, map_location)
    if is_ours(obj):
        if use_ema:
            raise CheckpointError(f"{path} is a unix-kd checkpoint, which holds no EMA weights; leave out --use-ema")
        ckpt = check_ours(obj, path)
        _check_agrees(path, ckpt, arch, num_classes, input_shape)
        meta = ckpt.get("meta") or {}
        name = meta.get("name") or f"{ckpt['arch']}-{meta.get('dataset', 'trained')}"
        return LoadedModel(model_from_checkpoint(ckpt, path), ckpt["arch"], int(ckpt["num_classes"]),
                           tuple(ckpt["input_shape"]), name, "unix-kd", meta.get("dataset"))
    description, state_dict = find_state_dict(obj, path, use_ema)
    if not arch or num_classes is None:
        raise CheckpointError(f"{path} is {description}, which does not say what network it is: give --arch "
                              "and --num-classes (and --input-shape C,H,W unless 3,32,32)")
    input_shape = tuple(input_shape or DEFAULT_INPUT_SHAPE)
    model = build_model(arch, num_classes=num_classes, in_channels=input_shape[0], image_size=input_shape[1:])
    how = load_foreign_state(model, state_dict, arch=f"{arch} with {num_classes} classes", source=path)
    log.info("%s: %s, loaded into %s %s", path, description, arch, how)
    return LoadedModel(model, arch, int(num_classes), input_shape, f"{arch}-{Path(path).stem}",
                       f"{description}, {how}")
