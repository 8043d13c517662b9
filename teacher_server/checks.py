"""What an Infer request must be before it is queued: decoded and checked, or refused saying what was wrong.

A bad request gets INVALID_ARGUMENT (RESOURCE_EXHAUSTED for a batch over the
max batch, or one whose reply would pass the message limit: 224 px feature maps
of a few hundred images pass gRPC's 2 GiB) with one short line saying what was
expected and what came, and never joins a batch. A request may carry view
recipes instead of images: those are checked against the data set the server
holds (``teacher_server.recipes``) and rendered later, once the answer store
has said which rows it lacks.
"""
from __future__ import annotations

from dataclasses import dataclass

import grpc
import torch

from common import codec, reductions
from common.message_budget import bytes_per_image, images_that_fit, message_bytes
from common.teacher_model import TeacherModel
from common.views import Views
from protos import teacher_pb2 as pb
from teacher_server import recipes
from teacher_server.finite import require_finite

MAX_REQUEST_ID = 128
MAX_OUTPUT_KEY = 128


class BadRequest(Exception):
    """A call refused with ``code``; its message is the call's details."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def invalid(message: str) -> BadRequest:
    return BadRequest(grpc.StatusCode.INVALID_ARGUMENT, message)


def short(value, limit: int = 120) -> str:
    """``repr``-like text of client-sent values, cut so an error message stays one short line."""
    text = str(list(value)) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(value)} items)"


def _cut(text: str, limit: int = 320) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class Checked:
    """A request decoded and checked: its images, or its view recipes (rendered in ``render_dtype``)."""
    images: torch.Tensor | None
    outputs: list[str]
    out_dtype: int
    views: Views | None = None
    render_dtype: int = 0

    @property
    def rows(self) -> int:
        return self.images.shape[0] if self.views is None else len(self.views)


class RequestChecks:
    """The checks of one server: its teacher's input and outputs, its max batch and message limit, the
    split it renders recipes from (None: images only) and whether pixels must be finite."""

    def __init__(self, teacher: TeacherModel, *, max_batch: int, max_message_bytes: int,
                 data: recipes.ServedData | None, check_finite: bool):
        self.teacher, self.max_batch, self.data, self.check_finite = teacher, max_batch, data, check_finite
        self.max_message_bytes = max_message_bytes

    def check(self, request: pb.InferRequest) -> Checked:
        """Decode and check a request (images, or view recipes); BadRequest says what was expected and what came."""
        if len(request.request_id) > MAX_REQUEST_ID:
            raise invalid(f"request_id must be at most {MAX_REQUEST_ID} characters, "
                          f"got {len(request.request_id)}")
        has_images, has_views = request.HasField("images"), request.HasField("views")
        if has_images and has_views:
            raise invalid("request has both images and view recipes; send one of them")
        if not has_images and not has_views:
            raise invalid("request has no images tensor (and no view recipes)")
        in_dtype = request.images.dtype if has_images else (request.views.render_dtype or pb.FLOAT32)
        if in_dtype not in codec.ITEMSIZE:
            raise invalid(f"{'images' if has_images else 'view recipes: render'}: unknown dtype code {in_dtype}; "
                          f"expected one of { {name: code for name, code in codec.WIRE_DTYPES.items()} }")
        n = self._recipe_rows(request.views) if has_views else self._image_rows(request.images)
        if n < 1:
            raise invalid(f"batch must hold at least 1 image, got {n}")
        if n > self.max_batch:
            raise BadRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"batch of {n} images is over this server's max batch {self.max_batch}")
        outputs = self._outputs(request)
        out_dtype = request.output_dtype or in_dtype
        if out_dtype not in codec.ITEMSIZE:
            raise invalid(f"unknown output dtype code {out_dtype}; expected one of {sorted(codec.WIRE_DTYPES)}")
        self._check_reply_fits(n, outputs, out_dtype)
        if has_views:
            return self._recipes(request.views, in_dtype, outputs, out_dtype)
        return Checked(self._images(request.images), outputs, out_dtype)

    def _check_reply_fits(self, n: int, outputs: list[str], out_dtype: int) -> None:
        """Refuse, before any forward, a request whose reply could not be sent (gRPC would drop it after
        the work, or fail to serialize it past 2 GiB), saying how many images would fit."""
        per_image = bytes_per_image(self.teacher.output_shapes, outputs, codec.ITEMSIZE[out_dtype])
        if message_bytes(per_image, n) <= self.max_message_bytes:
            return
        fit = images_that_fit(self.max_message_bytes, per_image)
        raise BadRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"the reply to {n} images with outputs {short(outputs, 100)} would be "
                         f"{message_bytes(per_image, n) / 1e6:.0f} MB, over this server's message limit of "
                         f"{self.max_message_bytes / 1e6:.0f} MB: at most {fit} images a request with these outputs")

    def _image_rows(self, images: pb.Tensor) -> int:
        want = (*self.teacher.input_shape,)
        if len(images.shape) != 4 or tuple(images.shape[1:]) != want:
            raise invalid(f"images must have shape [N, {', '.join(map(str, want))}], got {short(images.shape)}")
        return images.shape[0]

    def _recipe_rows(self, msg: pb.ViewRecipes) -> int:
        """How many rows a recipe request holds, where this server can render them at all."""
        if self.data is None:
            raise invalid("view recipes sent, but this server holds no data set to render them from (start "
                          "it with --dataset NAME); send images")
        if len(msg.rows) % recipes.ROW_BYTES:
            raise invalid(f"view recipes must be whole rows of {recipes.ROW_BYTES} bytes "
                          f"({Views.COLUMNS} int64), got {len(msg.rows)} bytes")
        return len(msg.rows) // recipes.ROW_BYTES

    def _outputs(self, request: pb.InferRequest) -> list[str]:
        outputs = list(request.outputs) or [reductions.LOGITS]
        if len(set(outputs)) != len(outputs):
            raise invalid(f"outputs must be distinct keys, got {short(outputs)}")
        for key in outputs:
            if len(key) > MAX_OUTPUT_KEY:
                raise invalid(f"outputs must be keys of at most {MAX_OUTPUT_KEY} characters, got one of {len(key)}")
            try:
                reductions.check_key(key, self.teacher.output_shapes)
            except ValueError as e:
                raise invalid(f"outputs must be keys NAME or NAME.REDUCTION that this teacher offers; "
                              f"{_cut(str(e))}") from None
        return outputs

    def _images(self, msg: pb.Tensor) -> torch.Tensor:
        try:
            images = codec.decode(msg)  # checks byte length == shape x itemsize
        except codec.CodecError as e:
            raise invalid(f"images: {e}") from None
        if self.check_finite:
            try:
                require_finite(images)
            except ValueError as e:
                raise invalid(str(e)) from None
        return images

    def _recipes(self, msg: pb.ViewRecipes, render_dtype: int, outputs: list[str], out_dtype: int) -> Checked:
        """View recipes checked against the data set held here (rendered once the store has said which
        rows it lacks)."""
        try:
            views = recipes.decode(msg, self.data)
        except ValueError as e:
            raise invalid(f"view recipes: {_cut(str(e))}") from None
        return Checked(None, outputs, out_dtype, views, render_dtype)
