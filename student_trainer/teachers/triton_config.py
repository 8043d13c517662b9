"""A Triton model's config read as a teacher: its input and wire dtype, its outputs by plain name, and the
``TeacherInfo`` it adds up to.

Works with ``python -m teacher_server --backend triton`` and with a stock Triton
serving a repository from ``python -m teacher_server.export``: LibTorch's
``NAME__INDEX`` tensor names are mapped back to ``NAME``. The teacher's facts
that Triton's config has no field for (arch, FLOPs, data set, ...) ride in its
``parameters``. The logits as compact top-k answers (``logits.topK``, UINT8
[4K + 2] a row, ``teacher_server.triton_backend.pack_top_k``) are neither full
outputs nor features: ``unpack_top_k`` rebuilds them to the dense logits.
"""
from __future__ import annotations

import re
from functools import cached_property

import numpy as np
import torch

from common.message_budget import GRPC_MESSAGE_CEILING
from common.reductions import LOGITS, NONE
from common.reductions import parse_key, top_k
from student_trainer.teachers.types import TeacherInfo

# Triton's input data type -> (its tensor datatype name, numpy dtype, our --wire-dtype name).
WIRE = {"TYPE_FP16": ("FP16", np.float16, "float16"), "TYPE_FP32": ("FP32", np.float32, "float32")}


def plain_name(triton_name: str) -> str:
    """'logits__0' (LibTorch's naming convention) -> 'logits'; other names unchanged."""
    return re.sub(r"__\d+$", "", triton_name)


def top_k_of(name: str) -> int | None:
    """K of a top-k output's plain name (``logits.top10`` -> 10); None for any other output."""
    output, reduction = parse_key(name)
    return top_k(reduction) if output == LOGITS else None


def unpack_top_k(rows: np.ndarray, k: int, classes: int) -> torch.Tensor:
    """A ``logits.topK`` output, uint8 [N, 4K + 2], as the dense float32 logits [N, classes] it stands for.

    Each row holds its image's K indices (int16), K values (float16) and rest (float16), little-endian
    (``teacher_server.triton_backend.pack_top_k``); ``TopK.from_bytes`` reads them as its columnar
    layout (every row's indices, then every row's values, then the rests). ValueError on bad data.
    """
    from common.topk import TopK

    rows = np.asarray(rows)
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 4 * k + 2:
        raise ValueError(f"a logits.top{k} answer is uint8 [N, {4 * k + 2}], got {rows.dtype} {list(rows.shape)}")
    columnar = b"".join(np.ascontiguousarray(rows[:, cols]).tobytes()
                        for cols in (slice(0, 2 * k), slice(2 * k, 4 * k), slice(4 * k, None)))
    return TopK.from_bytes(columnar, rows.shape[0], k, classes).dense()


class ModelConfig:
    """``get_model_config(MODEL, as_json=True)["config"]`` of the model named ``model``."""

    def __init__(self, model: str, config: dict):
        self.model, self.config = model, config

    @property
    def input(self) -> dict:
        return self.config["input"][0]

    @property
    def wire_name(self) -> str:
        """The input's dtype as a --wire-dtype name (Triton's own name where it is none of ours)."""
        return WIRE.get(self.input["data_type"], (None, None, self.input["data_type"]))[2]

    @cached_property
    def outputs(self) -> dict[str, str]:
        """Plain output name -> the name Triton knows it by."""
        return {plain_name(o["name"]): o["name"] for o in self.config["output"]}

    @cached_property
    def output_dims(self) -> dict[str, list[int]]:
        return {plain_name(o["name"]): [int(d) for d in o["dims"]] for o in self.config["output"]}

    @cached_property
    def top_k(self) -> dict[str, int]:
        """The compact top-k outputs (``logits.topK``, UINT8 [4K + 2]): plain name -> K, K ascending."""
        types = {plain_name(o["name"]): o["data_type"] for o in self.config["output"]}
        found = {n: top_k_of(n) for n in self.outputs}
        return dict(sorted(((n, k) for n, k in found.items()
                            if k is not None and types[n] == "TYPE_UINT8" and self.output_dims[n] == [4 * k + 2]),
                           key=lambda item: item[1]))

    def check_top_k(self, outputs: list[str]) -> None:
        """A ValueError, in one line, for a top-k key (``logits.top7``) this model does not serve."""
        for key in outputs:
            if top_k_of(key) is not None and key not in self.outputs:
                served = ", ".join(str(k) for k in self.top_k.values())
                raise ValueError((f"this Triton teacher serves top-k answers for K in {served} ({LOGITS}.topK)"
                                  if served else "this Triton teacher serves no top-k answers") +
                                 f"; asked for {key}; the gRPC server serves any K")

    def info(self) -> TeacherInfo:
        """The teacher this model is; a ValueError where it cannot be one (no logits, no batching)."""
        params = {k: v.get("string_value", "") for k, v in self.config.get("parameters", {}).items()}
        if LOGITS not in self.outputs:
            raise ValueError(f"Triton model {self.model!r} has no 'logits' output (outputs: {list(self.outputs)})")
        if not self.config.get("max_batch_size"):
            raise ValueError(f"Triton model {self.model!r} does not batch (max_batch_size 0); a teacher must")
        # Outputs named NAME.REDUCTION are NAME reduced on the server (the 'reductions' parameter
        # lists those offered); the others are the full outputs, but for the top-k answers of the
        # logits (logits.topK), which are the logits again.
        offered = [r for r in params.get("reductions", "").split(",") if r]
        full = {n: tuple(d) for n, d in self.output_dims.items()
                if (parse_key(n)[1] == NONE or parse_key(n)[1] not in offered) and top_k_of(n) is None}
        return TeacherInfo(
            model_name=params.get("teacher_name") or self.model,
            arch=params.get("arch", "unknown"),
            input_shape=tuple(int(d) for d in self.input["dims"]),
            num_classes=int(self.output_dims[LOGITS][-1]),
            feature_names=[n for n in full if n != LOGITS],
            flops_per_image=float(params.get("flops_per_image", 0.0)),
            max_batch_size=int(self.config["max_batch_size"]),
            output_shapes=full, reductions=offered, dataset=params.get("dataset") or None,
            weights_sha256=params.get("weights_sha256") or None,
            max_message_bytes=GRPC_MESSAGE_CEILING)  # Triton's gRPC front takes and sends no more
