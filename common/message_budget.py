"""How many images fit in one gRPC message: one sum, used by the server that refuses and the client that splits.

gRPC's message-size options are C ints, so no message may pass 2**31 - 1 bytes
(Triton's gRPC front has the same ceiling). At 224 px a reply holding every
full feature map of a few hundred images is larger than that, so the limit is
a number of images that depends on the keys asked for: the server refuses a
request whose reply would not fit, saying how many images would, and the
client splits a batch with this same sum so that it is never refused.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

from common import reductions

GRPC_MESSAGE_CEILING = 2**31 - 1  # the largest message gRPC can be told to accept or send
FRAMING_BYTES = 1 << 20  # room for the protobuf framing, shapes, ids and key names around the tensors


def key_numel(output_shapes: Mapping[str, tuple[int, ...]], key: str) -> int:
    """Numbers per image in the answer to ``key`` (``stage3``, ``stage3.attention``) of a teacher with
    these full outputs; ValueError for a key it does not offer."""
    name, reduction = reductions.check_key(key, output_shapes)
    return math.prod(reductions.reduced_shape(reduction, tuple(output_shapes[name])))


def bytes_per_image(output_shapes: Mapping[str, tuple[int, ...]], keys: Iterable[str], itemsize: int) -> int:
    """Bytes per image of a reply holding ``keys`` in a dtype of ``itemsize`` bytes (a top-k key travels
    compact whatever the dtype: 4K + 2 bytes)."""
    total = 0
    for key in keys:
        k = reductions.top_k(reductions.check_key(key, output_shapes)[1])
        total += 4 * k + 2 if k is not None else key_numel(output_shapes, key) * itemsize
    return total


def message_bytes(per_image: int, images: int) -> int:
    """The size to allow for a message carrying ``images`` images of ``per_image`` bytes each."""
    return per_image * images + FRAMING_BYTES


def images_that_fit(limit: int, per_image: int) -> int:
    """The most images of ``per_image`` bytes one message within ``limit`` bytes carries (0: not even one)."""
    return max(0, (limit - FRAMING_BYTES) // max(1, per_image))
