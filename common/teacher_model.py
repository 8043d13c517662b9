"""The teacher model in inference mode, with the one lock that serialises forwards.

In ``common`` because three users run the same model: the server (gRPC and
Triton), the exporter and the trainer's in-process ``local:`` teacher.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from common import reductions
from common.devices import resolve_device
from common.foreign_checkpoints import DEFAULT_INPUT_SHAPE, model_from_file
from common.features import feature_names, forward_with_features
from common.flops import forward_flops_per_image
from common.models import build_model


@dataclass
class TeacherModel:
    """A model ready to serve: eval mode, on its device, with its measured FLOPs.

    ``output_shapes`` (logits, then every named feature -> per-image shape) is
    measured once, by one probe forward when the object is made; everything
    that needs shapes (message limits, Describe, Triton's config, the export)
    reads it from here.
    """
    model: nn.Module
    arch: str
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    device: torch.device
    compute_dtype: torch.dtype
    flops_per_image: float
    output_shapes: dict[str, tuple[int, ...]] | None = None
    dataset: str | None = None  # the data set it was trained on, where its checkpoint records it

    def __post_init__(self):
        # The one lock around the model. In the gRPC server only the batcher's thread calls forward, so it is
        # never contended there; it keeps other callers sharing one model (the in-process client, tests) from
        # running forwards at once, whose feature hooks would capture each other's tensors.
        self._lock = threading.Lock()
        dotted = [n for n in self.feature_names if reductions.SEPARATOR in n or n == reductions.LOGITS]
        if dotted:
            raise ValueError(f"feature names {dotted} cannot be served: '{reductions.SEPARATOR}' separates an "
                             "output from its reduction in a key, and 'logits' is the logits")
        if self.output_shapes is None:
            self.output_shapes = self._probe_shapes()

    def _probe_shapes(self) -> dict[str, tuple[int, ...]]:
        names = [reductions.LOGITS, *self.feature_names]
        result, _ = self.forward(torch.zeros(1, *self.input_shape), names)
        return {name: tuple(result[name].shape[1:]) for name in names}

    @property
    def weights_sha256(self) -> str:
        """Who answers: sha256 over the state dict's names, dtypes, shapes and bytes (as served: a teacher cast
        to half is another teacher), so answers stored for one teacher are never given out as another's."""
        if not hasattr(self, "_weights_sha256"):
            self._weights_sha256 = weights_digest(self.model)
        return self._weights_sha256

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.model)

    @property
    def output_keys(self) -> dict[str, tuple[int, ...]]:
        """Every key this teacher answers (outputs, and each reduction of each) -> per-image shape."""
        return reductions.offered_keys(self.output_shapes)

    def forward(self, images: torch.Tensor, keys: Iterable[str]) -> tuple[dict[str, torch.Tensor], float]:
        """Run one batch; return the wanted keys (float32, on the CPU) and the forward seconds.

        A key is an output name (``logits``, ``stage3``) or ``NAME.REDUCTION``
        (``stage3.attention``): the model runs once, the features the keys need
        are captured, and each key's reduction is applied on the device, before
        the copy to the CPU. An unknown key raises ValueError.
        """
        # (the probe at load runs before there are shapes to check keys against)
        parsed = {key: reductions.parse_key(key) if self.output_shapes is None
                  else reductions.check_key(key, self.output_shapes) for key in keys}
        features = list(dict.fromkeys(name for name, _ in parsed.values() if name != reductions.LOGITS))
        with self._lock, torch.inference_mode():
            x = images.to(self.device, self.compute_dtype, non_blocking=True)
            start = time.perf_counter()
            logits, feats = forward_with_features(self.model, x, features)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            result = {reductions.LOGITS: logits, **feats}
            out = {key: reductions.reduce(reduction, result[name].float())
                   for key, (name, reduction) in parsed.items()}
        return {key: t.cpu() for key, t in out.items()}, seconds


def weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32 if tensor.is_floating_point() else tensor.dtype).contiguous()
        digest.update(f"{name}|{str(t.dtype)}|{list(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _prepare(model: nn.Module, device: str, half: bool) -> tuple[nn.Module, torch.device, torch.dtype]:
    dev = resolve_device(device)
    if half and dev.type != "cuda":
        raise ValueError("--half needs --device cuda (half precision on the CPU is slow and inexact)")
    dtype = torch.float16 if half else torch.float32
    return model.to(dev, dtype).eval(), dev, dtype


def load_teacher(checkpoint: str | None = None, *, arch: str | None = None, num_classes: int | None = None,
                 input_shape: tuple[int, int, int] | None = None, seed: int = 0,
                 device: str = "cpu", half: bool = False, use_ema: bool = False) -> TeacherModel:
    """From a checkpoint, or (``arch`` alone) a randomly initialised model for smoke tests.

    The checkpoint is ours (``arch``, ``num_classes``, ``input_shape`` optional, and
    checked against the file if given) or another project's state dict (bare, or
    under ``model`` / ``state_dict`` / ``net``, or a ``.safetensors`` file: ``arch`` and
    ``num_classes`` needed; ``use_ema``: a timm file's EMA weights); see
    ``common.foreign_checkpoints``. Each is read weights-only.
    """
    if checkpoint:
        loaded = model_from_file(checkpoint, arch=arch, num_classes=num_classes, input_shape=input_shape,
                                 use_ema=use_ema)
        model, arch, num_classes, input_shape = loaded.model, loaded.arch, loaded.num_classes, loaded.input_shape
        name, dataset = loaded.name, loaded.dataset
    elif use_ema:
        raise ValueError("--use-ema picks the EMA weights of a --checkpoint; a random teacher has none")
    elif arch:
        num_classes = 10 if num_classes is None else num_classes
        input_shape = tuple(input_shape or DEFAULT_INPUT_SHAPE)
        torch.manual_seed(seed)
        model = build_model(arch, num_classes=num_classes, in_channels=input_shape[0], image_size=input_shape[1:])
        name, dataset = f"{arch}-random-seed{seed}", None
    else:
        raise ValueError("give --checkpoint PATH, or --arch NAME for a randomly initialised teacher")
    try:  # the first forward: where a model meets images it cannot take
        flops = forward_flops_per_image(model, input_shape)
    except (RuntimeError, IndexError, AssertionError) as e:
        raise ValueError(f"{arch} cannot take {'x'.join(map(str, input_shape))} images: "
                         f"{' '.join(str(e).split())[:300]}") from None
    model, dev, dtype = _prepare(model, device, half)
    return TeacherModel(model, arch, name, tuple(input_shape), int(num_classes), dev, dtype, flops,
                        dataset=dataset)
