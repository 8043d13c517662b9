from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    TOPK: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
BFLOAT16: DType
UINT8: DType
TOPK: DType

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "scale", "offset", "topk")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOPK_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    scale: float
    offset: float
    topk: int
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., scale: _Optional[float] = ..., offset: _Optional[float] = ..., topk: _Optional[int] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("images", "outputs", "request_id", "output_dtype", "views", "verify")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    outputs: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    output_dtype: DType
    views: ViewRecipes
    verify: bool
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., outputs: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., output_dtype: _Optional[_Union[DType, str]] = ..., views: _Optional[_Union[ViewRecipes, _Mapping]] = ..., verify: _Optional[bool] = ...) -> None: ...

class ViewRecipes(_message.Message):
    __slots__ = ("rows", "render_dtype")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    RENDER_DTYPE_FIELD_NUMBER: _ClassVar[int]
    rows: bytes
    render_dtype: DType
    def __init__(self, rows: _Optional[bytes] = ..., render_dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class DataSetInfo(_message.Message):
    __slots__ = ("name", "size", "fingerprint", "files_fingerprint", "view_settings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    FILES_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    VIEW_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    fingerprint: str
    files_fingerprint: str
    view_settings: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., fingerprint: _Optional[str] = ..., files_fingerprint: _Optional[str] = ..., view_settings: _Optional[str] = ...) -> None: ...

class ManifestRequest(_message.Message):
    __slots__ = ("start", "count")
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    start: int
    count: int
    def __init__(self, start: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ManifestResponse(_message.Message):
    __slots__ = ("range_digest", "files", "path", "size", "digest")
    RANGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    range_digest: str
    files: int
    path: str
    size: int
    digest: str
    def __init__(self, range_digest: _Optional[str] = ..., files: _Optional[int] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("outputs", "request_id", "compute_seconds")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.MessageMap[str, Tensor]
    request_id: str
    compute_seconds: float
    def __init__(self, outputs: _Optional[_Mapping[str, Tensor]] = ..., request_id: _Optional[str] = ..., compute_seconds: _Optional[float] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("model_name", "arch", "input_shape", "num_classes", "feature_names", "flops_per_image", "max_batch_size", "max_message_bytes", "device", "compute_dtype", "outputs", "reductions", "dataset", "weights_sha256", "data")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    FLOPS_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REDUCTIONS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    arch: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    flops_per_image: float
    max_batch_size: int
    max_message_bytes: int
    device: str
    compute_dtype: str
    outputs: _containers.RepeatedCompositeFieldContainer[OutputInfo]
    reductions: _containers.RepeatedScalarFieldContainer[str]
    dataset: str
    weights_sha256: str
    data: DataSetInfo
    def __init__(self, model_name: _Optional[str] = ..., arch: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ..., feature_names: _Optional[_Iterable[str]] = ..., flops_per_image: _Optional[float] = ..., max_batch_size: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., device: _Optional[str] = ..., compute_dtype: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[OutputInfo, _Mapping]]] = ..., reductions: _Optional[_Iterable[str]] = ..., dataset: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., data: _Optional[_Union[DataSetInfo, _Mapping]] = ...) -> None: ...

class OutputInfo(_message.Message):
    __slots__ = ("name", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("client_id", "per_client")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    per_client: bool
    def __init__(self, client_id: _Optional[str] = ..., per_client: _Optional[bool] = ...) -> None: ...

class ClientStats(_message.Message):
    __slots__ = ("client_id", "requests", "images", "bytes_in", "bytes_out", "forward_seconds", "flops_served", "failed_requests", "rendered_images", "render_seconds", "store_images", "verify_images")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FLOPS_SERVED_FIELD_NUMBER: _ClassVar[int]
    FAILED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RENDERED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    RENDER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STORE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    VERIFY_IMAGES_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    requests: int
    images: int
    bytes_in: int
    bytes_out: int
    forward_seconds: float
    flops_served: float
    failed_requests: int
    rendered_images: int
    render_seconds: float
    store_images: int
    verify_images: int
    def __init__(self, client_id: _Optional[str] = ..., requests: _Optional[int] = ..., images: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., forward_seconds: _Optional[float] = ..., flops_served: _Optional[float] = ..., failed_requests: _Optional[int] = ..., rendered_images: _Optional[int] = ..., render_seconds: _Optional[float] = ..., store_images: _Optional[int] = ..., verify_images: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("requests", "images", "bytes_in", "bytes_out", "forward_seconds", "flops_served", "uptime_seconds", "failed_requests", "forwards", "forward_images", "busy_seconds", "mean_batch_images", "client_id", "clients", "rendered_images", "render_seconds", "store_images", "verify_images")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FLOPS_SERVED_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FAILED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FORWARDS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_IMAGES_FIELD_NUMBER: _ClassVar[int]
    BUSY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_IMAGES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    RENDERED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    RENDER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STORE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    VERIFY_IMAGES_FIELD_NUMBER: _ClassVar[int]
    requests: int
    images: int
    bytes_in: int
    bytes_out: int
    forward_seconds: float
    flops_served: float
    uptime_seconds: float
    failed_requests: int
    forwards: int
    forward_images: int
    busy_seconds: float
    mean_batch_images: float
    client_id: str
    clients: _containers.RepeatedCompositeFieldContainer[ClientStats]
    rendered_images: int
    render_seconds: float
    store_images: int
    verify_images: int
    def __init__(self, requests: _Optional[int] = ..., images: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., forward_seconds: _Optional[float] = ..., flops_served: _Optional[float] = ..., uptime_seconds: _Optional[float] = ..., failed_requests: _Optional[int] = ..., forwards: _Optional[int] = ..., forward_images: _Optional[int] = ..., busy_seconds: _Optional[float] = ..., mean_batch_images: _Optional[float] = ..., client_id: _Optional[str] = ..., clients: _Optional[_Iterable[_Union[ClientStats, _Mapping]]] = ..., rendered_images: _Optional[int] = ..., render_seconds: _Optional[float] = ..., store_images: _Optional[int] = ..., verify_images: _Optional[int] = ...) -> None: ...
