"""The teacher model in inference mode, with the one lock that serialises forwards."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from common.checkpoint import load_checkpoint, model_from_checkpoint
from common.features import feature_names, forward_with_features
from common.flops import forward_flops_per_image
from common.models import build_model


@dataclass
class TeacherModel:
    """A model ready to serve: eval mode, on its device, with its measured FLOPs."""
    model: nn.Module
    arch: str
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    device: torch.device
    compute_dtype: torch.dtype
    flops_per_image: float

    def __post_init__(self):
        self._lock = threading.Lock()

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.model)

    def forward(self, images: torch.Tensor, outputs: list[str]) -> tuple[dict[str, torch.Tensor], float]:
        """Run one batch; return the wanted outputs (on the CPU) and the forward seconds."""
        features = [o for o in outputs if o != "logits"]
        with self._lock, torch.inference_mode():
            x = images.to(self.device, self.compute_dtype, non_blocking=True)
            start = time.perf_counter()
            logits, feats = forward_with_features(self.model, x, features)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
        result = {"logits": logits, **feats}
        return {o: result[o].float().cpu() for o in outputs}, seconds


def _prepare(model: nn.Module, device: str, half: bool) -> tuple[nn.Module, torch.device, torch.dtype]:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    if half and dev.type != "cuda":
        raise ValueError("--half needs --device cuda (half precision on the CPU is slow and inexact)")
    dtype = torch.float16 if half else torch.float32
    return model.to(dev, dtype).eval(), dev, dtype


def load_teacher(checkpoint: str | None = None, *, arch: str | None = None, num_classes: int = 10,
                 input_shape: tuple[int, int, int] = (3, 32, 32), seed: int = 0,
                 device: str = "cpu", half: bool = False) -> TeacherModel:
    """From a checkpoint, or (``arch`` given) a randomly initialised model for smoke tests."""
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        model = model_from_checkpoint(ckpt)
        arch, num_classes, input_shape = ckpt["arch"], ckpt["num_classes"], tuple(ckpt["input_shape"])
        name = ckpt.get("meta", {}).get("name") or f"{arch}-{ckpt.get('meta', {}).get('dataset', 'trained')}"
    elif arch:
        torch.manual_seed(seed)
        model = build_model(arch, num_classes=num_classes, in_channels=input_shape[0])
        name = f"{arch}-random-seed{seed}"
    else:
        raise ValueError("give --checkpoint PATH, or --arch NAME for a randomly initialised teacher")
    flops = forward_flops_per_image(model, input_shape)
    model, dev, dtype = _prepare(model, device, half)
    return TeacherModel(model, arch, name, tuple(input_shape), int(num_classes), dev, dtype, flops)
