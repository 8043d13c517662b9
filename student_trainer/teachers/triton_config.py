"""A Triton model's config read as a teacher: its input and wire dtype, its outputs by plain name, and the
``TeacherInfo`` it adds up to.

Works with ``python -m teacher_server --backend triton`` and with a stock Triton
serving a repository from ``python -m teacher_server.export``: LibTorch's
``NAME__INDEX`` tensor names are mapped back to ``NAME``. The teacher's facts
that Triton's config has no field for (arch, FLOPs, data set, ...) ride in its
``parameters``.
"""
from __future__ import annotations

import re
from functools import cached_property

import numpy as np

from common.message_budget import GRPC_MESSAGE_CEILING
from common.reductions import LOGITS, NONE
from common.reductions import parse_key
from student_trainer.teachers.types import TeacherInfo

# Triton's input data type -> (its tensor datatype name, numpy dtype, our --wire-dtype name).
WIRE = {"TYPE_FP16": ("FP16", np.float16, "float16"), "TYPE_FP32": ("FP32", np.float32, "float32")}


def plain_name(triton_name: str) -> str:
    """'logits__0' (LibTorch's naming convention) -> 'logits'; other names unchanged."""
    return re.sub(r"__\d+$", "", triton_name)


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

    def info(self) -> TeacherInfo:
        """The teacher this model is; a ValueError where it cannot be one (no logits, no batching)."""
        params = {k: v.get("string_value", "") for k, v in self.config.get("parameters", {}).items()}
        if LOGITS not in self.outputs:
            raise ValueError(f"Triton model {self.model!r} has no 'logits' output (outputs: {list(self.outputs)})")
        if not self.config.get("max_batch_size"):
            raise ValueError(f"Triton model {self.model!r} does not batch (max_batch_size 0); a teacher must")
        # Outputs named NAME.REDUCTION are NAME reduced on the server (the 'reductions' parameter
        # lists those offered); the others are the full outputs.
        offered = [r for r in params.get("reductions", "").split(",") if r]
        full = {n: tuple(d) for n, d in self.output_dims.items()
                if parse_key(n)[1] == NONE or parse_key(n)[1] not in offered}
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
