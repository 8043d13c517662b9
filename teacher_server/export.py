"""python -m teacher_server.export: write a Triton model repository for the stock Triton container.

    DIR/MODEL/config.pbtxt      dynamic batching, the teacher's facts as parameters
    DIR/MODEL/1/model.pt        TorchScript, for Triton's LibTorch backend    (--format torchscript)
    DIR/MODEL/1/model.onnx      ONNX, for Triton's ONNX Runtime backend       (--format onnx)

The model takes the image batch and returns logits, every named feature map and
each reduction of each (``stage3.attention``, ``stage3.pool``: ``common.reductions``),
the same outputs as ``--backend triton``; a ``triton://`` client reads either.
LibTorch tensors have no names, so there they follow its ``NAME__INDEX``
convention (``images__0``, ``logits__0``, ``logits.pool__1``, ``stem__2`` ...),
which the client maps back (LibTorch splits at the first ``__``; a ``.`` in
the name is fine). After writing, the file is loaded again (torch / onnxruntime on the
CPU) and its logits compared with the eager model's.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from common import reductions
from common.reductions import LOGITS
from common.cli_errors import one_line_errors, parse_shape
from common.features import capture_features
from common.teacher_model import TeacherModel, load_teacher
from teacher_server.triton_backend import teacher_parameters, triton_max_batch

log = logging.getLogger("teacher_server.export")

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}
TRITON_DTYPES = {"float16": "TYPE_FP16", "float32": "TYPE_FP32"}
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU", "auto": "KIND_AUTO"}
ONNX_OPSET = 17


class TeacherWithFeatures(nn.Module):
    """The teacher as exporters want it: one tensor in, a flat tuple out, one tensor per key.

    ``keys`` are output keys (``logits``, ``stage3``, ``stage3.attention``, ...).
    Features are taken by the same forward hooks as in serving (``common.features``)
    and reduced by the same functions (``common.reductions``); tracing records
    them as ordinary graph values. Images are cast to float32 first, so a float16
    input halves the bytes on the wire only.
    """

    def __init__(self, model: nn.Module, keys: list[str]):
        super().__init__()
        self.model = model
        self.keys = [reductions.parse_key(k) for k in keys]
        self.feature_names = list(dict.fromkeys(name for name, _ in self.keys if name != LOGITS))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with capture_features(self.model, self.feature_names) as feats:
            logits = self.model(images.float())
        outputs = {LOGITS: logits, **feats}
        return tuple(reductions.reduce(reduction, outputs[name]) for name, reduction in self.keys)


@dataclass(frozen=True)
class ExportFormat:
    platform: str
    backend: str
    filename: str
    write: Callable[[TeacherWithFeatures, torch.Tensor, Path, list[str], list[str]], None]
    indexed_names: bool  # LibTorch's NAME__INDEX convention
    # Runs the exported file on the CPU as its Triton backend would: (model file, config, images) -> outputs
    # in the config's order.
    run: Callable[[Path, object, torch.Tensor], list]

    def tensor_names(self, outputs: list[str]) -> tuple[str, list[str]]:
        if not self.indexed_names:
            return "images", list(outputs)
        return "images__0", [f"{name}__{i}" for i, name in enumerate(outputs)]

    def plain_name(self, tensor_name: str) -> str:
        """An output's name as the teacher gives it, from its name in the exported file."""
        return tensor_name.rsplit("__", 1)[0] if self.indexed_names else tensor_name


def _write_torchscript(wrapper, example, path, input_name, output_names) -> None:
    with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is what LibTorch loads
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # (verify() runs the file on another batch)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
    traced.save(str(path))


@contextmanager
def _stdout_silenced():
    """fd 1 to /dev/null: when the TorchScript-based ONNX exporter fails it prints the whole graph there
    (thousands of lines) from C++, since its log switch is always on in this torch release."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _write_onnx(wrapper, example, path, input_name, output_names) -> None:
    batch = {0: "batch"}
    with warnings.catch_warnings(), _stdout_silenced():  # the TorchScript-based exporter: no onnxscript needed
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[input_name], output_names=output_names,
                          dynamic_axes={name: batch for name in [input_name, *output_names]})


def _run_torchscript(path: Path, config, images: torch.Tensor) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return list(module(images))


def _run_onnx(path: Path, config, images: torch.Tensor) -> list:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = session.run([o.name for o in config.output], {config.input[0].name: images.numpy()})
    return [torch.from_numpy(r) for r in results]


FORMATS: dict[str, ExportFormat] = {
    "torchscript": ExportFormat("pytorch_libtorch", "pytorch", "model.pt", _write_torchscript, True,
                                _run_torchscript),
    "onnx": ExportFormat("onnxruntime_onnx", "onnxruntime", "model.onnx", _write_onnx, False, _run_onnx),
}


def model_config(teacher: TeacherModel, fmt: ExportFormat, shapes: dict[str, tuple[int, ...]], *,
                 model_name: str, max_batch: int, queue_delay_us: int, instances: int,
                 instance_kind: str, input_dtype: str):
    """Triton's ``ModelConfig`` protobuf for the exported model."""
    from tritonclient.grpc import model_config_pb2 as mc

    input_name, output_names = fmt.tensor_names(list(shapes))
    config = mc.ModelConfig(name=model_name, platform=fmt.platform, backend=fmt.backend,
                            max_batch_size=max_batch)
    config.input.add(name=input_name, data_type=mc.DataType.Value(TRITON_DTYPES[input_dtype]),
                     dims=list(teacher.input_shape))
    for name, shape in zip(output_names, shapes.values()):
        config.output.add(name=name, data_type=mc.TYPE_FP32, dims=list(shape))
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.Kind.Value(INSTANCE_KINDS[instance_kind]))
    for key, value in teacher_parameters(teacher).items():
        config.parameters[key].string_value = value
    return config


def export(teacher: TeacherModel, out: str | Path, fmt: str, *, model_name: str = "teacher",
           max_batch: int = 256, queue_delay_us: int = 100, instances: int = 1, instance_kind: str = "gpu",
           input_dtype: str = "float16") -> Path:
    """Write ``out/model_name/{config.pbtxt, 1/model.*}``; return the model's folder."""
    from google.protobuf import text_format

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if max_batch < 1 or instances < 1 or queue_delay_us < 0:
        raise ValueError("--max-batch and --instances must be at least 1, --queue-delay-us at least 0")
    f = FORMATS[fmt]
    max_batch = triton_max_batch(teacher, max_batch, input_dtype)  # every reply must fit Triton's 2 GiB
    model = teacher.model.float().cpu().eval()
    shapes = teacher.output_keys  # every key the teacher offers -> per-image shape, measured at load
    wrapper = TeacherWithFeatures(model, list(shapes)).eval()
    example = torch.zeros(2, *teacher.input_shape, dtype=TORCH_DTYPES[input_dtype])
    folder = Path(out) / model_name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    input_name, output_names = f.tensor_names(list(shapes))
    try:
        with torch.no_grad():
            f.write(wrapper, example, folder / "1" / f.filename, input_name, output_names)
    except Exception as e:  # what tracing or the ONNX exporter cannot take (an operator, a Python branch)
        detail = " ".join(str(e).split())[:300] or type(e).__name__
        raise ValueError(f"{teacher.arch} cannot be exported as {fmt}: {detail}") from None
    config = model_config(teacher, f, shapes, model_name=model_name, max_batch=max_batch,
                          queue_delay_us=queue_delay_us, instances=instances, instance_kind=instance_kind,
                          input_dtype=input_dtype)
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    return folder


def run_exported(folder: Path, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run an exported model the way its Triton backend would (CPU); outputs by plain name."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    fmt = next((f for f in FORMATS.values() if f.backend == config.backend), None)
    if fmt is None:
        raise ValueError(f"{folder} holds a model for Triton's {config.backend!r} backend, which no export "
                         f"format here writes")
    results = fmt.run(folder / "1" / fmt.filename, config, images)
    return {fmt.plain_name(o.name): r for o, r in zip(config.output, results)}


def verify(teacher: TeacherModel, folder: Path, input_dtype: str, batch: int = 3) -> float:
    """Largest |logits difference| between the exported model and the eager one, on the same batch."""
    images = torch.randn(batch, *teacher.input_shape, generator=torch.Generator().manual_seed(0))
    images = images.to(TORCH_DTYPES[input_dtype])
    expected, _ = teacher.forward(images, [LOGITS])
    got = run_exported(folder, images)[LOGITS]
    return float((got.float() - expected[LOGITS]).abs().max())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m teacher_server.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a checkpoint written by the student trainer, or another project's "
                   "state dict or .safetensors file (with --arch and --num-classes); read weights-only")
    p.add_argument("--use-ema", action="store_true", help="load the EMA weights of a file that has them (timm's)")
    p.add_argument("--arch", help="with --checkpoint: the network of another project's state dict; "
                   "alone: export a randomly initialised ARCH")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes (needed for another project's file; default 10 for a random model)")
    p.add_argument("--input-shape", type=parse_shape, default=None, metavar="C,H,W",
                   help="image shape (default: the checkpoint's if ours, else 3,32,32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", required=True, choices=sorted(FORMATS))
    p.add_argument("--out", required=True, help="the model repository folder (created)")
    p.add_argument("--model-name", default="teacher")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--queue-delay-us", type=int, default=100, help="dynamic batching: longest wait for more requests")
    p.add_argument("--instances", type=int, default=1, help="instances per device")
    p.add_argument("--instance-kind", choices=sorted(INSTANCE_KINDS), default="gpu")
    p.add_argument("--input-dtype", choices=sorted(TORCH_DTYPES), default="float16")
    p.add_argument("--no-verify", action="store_true", help="skip reloading the file and comparing logits")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with one_line_errors("teacher_server.export"):
        if not args.checkpoint and not args.arch:
            raise ValueError("give --checkpoint PATH (with --arch and --num-classes for another project's "
                             "state dict), or --arch NAME alone for a randomly initialised model")
        teacher = load_teacher(args.checkpoint, arch=args.arch, num_classes=args.num_classes,
                               input_shape=args.input_shape, seed=args.seed, use_ema=args.use_ema)
        folder = export(teacher, args.out, args.format, model_name=args.model_name, max_batch=args.max_batch,
                        queue_delay_us=args.queue_delay_us, instances=args.instances,
                        instance_kind=args.instance_kind, input_dtype=args.input_dtype)
        log.info("wrote %s (%s, %s)", folder, FORMATS[args.format].platform,
                 ", ".join(p.name for p in sorted(folder.rglob("*")) if p.is_file()))
        if not args.no_verify:
            try:
                diff = verify(teacher, folder, args.input_dtype)
            except ImportError as e:  # onnxruntime is a test dependency, not a runtime one
                log.warning("not verified: %s", e)
                return
            log.info("max |logits - eager logits| = %.3g", diff)
            if diff > 1e-3:
                raise ValueError(f"the exported model's logits differ from the eager model's by {diff:.3g}")


if __name__ == "__main__":
    main()
