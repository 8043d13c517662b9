"""What a teacher call costs the student's core: CPU seconds of the calling process per call.

With the student on one core, every microsecond the client spends encoding, decoding, polling gRPC and
keeping its books comes out of training. The server runs on core 1 (one thread), this process on core 0
(one torch thread); it asks about the same batch of ``--images`` images ``--calls`` times, with 1 and with 4
requests on the wire, and prints the process's CPU time per call (``time.process_time``: every thread of
the process, gRPC's included) beside the wall time per call, for:

- ``client``: the trainer's own client (``student_trainer.teachers.connect``), as ``--prefetch`` uses it;
- ``grpc blocking`` / ``grpc futures``: the bare generated stub, one blocking call at a time or gRPC's own
  futures (1 and 4 on the wire), with the same encoded request and the reply decoded: the floor any gRPC
  client pays. (Futures with 1 on the wire cost more than blocking calls: gRPC Python starts its polling
  thread afresh for a future call that overlaps no other, which is why the trainer's client keeps its
  own threads that block on the calls);
- ``encode``: building and serialising the request alone.

With ``--backend triton`` the server is Triton (``python -m teacher_server --backend triton``) and the rows are
the trainer's Triton client (``triton://``) beside tritonclient's own ``InferenceServerClient.infer``, the
floor a Triton user pays.

    python benchmarks/bench_client_cost.py                 # 64 float16 images of 1x28x28, 200 calls
    python benchmarks/bench_client_cost.py --images 256
    python benchmarks/bench_client_cost.py --backend triton

Needs two cores and the shipped resnet20 teacher.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from bench_two_boxes import served  # noqa: E402  (beside this script)
from pinning import pinned  # noqa: E402


def per_call(calls: int, run) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of ``run()``, which makes ``calls`` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return 1000 * (time.process_time() - cpu) / calls, 1000 * (time.perf_counter() - wall) / calls


def in_flight(calls: int, depth: int, submit, wait) -> None:
    """``calls`` requests, ``depth`` on the wire at once, each waited for in order."""
    pending = []
    for _ in range(calls):
        pending.append(submit())
        if len(pending) >= depth:
            wait(pending.pop(0))
    for p in pending:
        wait(p)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--backend", choices=("grpc", "triton"), default="grpc")
    args = p.parse_args(argv)
    from common.launch import stop_teacher

    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w") as log:
        server, url = served(args.backend, log)  # on core 1, one thread
        try:
            with pinned({0}, 1):
                rows = (measure_triton if args.backend == "triton" else measure)(url, args.images, args.calls)
        finally:
            stop_teacher(server)
    print(f"\n{args.images} float16 images of 1x28x28 a call, {args.calls} calls; this process on core 0, the "
          f"{args.backend} server on core 1 (one thread each)")
    print("| caller | requests on the wire | CPU ms per call | wall ms per call |")
    print("|---|---|---|---|")
    for name, depth, cpu, wall in rows:
        print(f"| {name} | {depth} | {cpu:.2f} | {wall:.2f} |")


def client_rows(client, x, calls: int) -> list[tuple[str, int | str, float, float]]:
    """The trainer's client asking about ``x`` with 1 and with 4 requests on the wire, as ``--prefetch`` does."""
    return [("client", depth, *per_call(calls, lambda: in_flight(
        calls, depth, lambda: client.submit(x, ["logits"]), lambda f: f.result()))) for depth in (1, 4)]


def measure(url: str, images: int, calls: int) -> list[tuple[str, int | str, float, float]]:
    import grpc
    import torch

    from common import codec
    from protos import teacher_pb2 as pb
    from protos import teacher_pb2_grpc as pb_grpc
    from student_trainer.teachers import connect

    torch.set_num_threads(1)
    address = urlsplit(url).netloc
    client = connect(url, wire_dtype="float16")
    x = torch.randn(images, *client.describe().input_shape)
    code = codec.dtype_code("float16")

    def request():
        return pb.InferRequest(images=codec.encode(x, code), outputs=["logits"], request_id=uuid.uuid4().hex,
                               output_dtype=pb.FLOAT32)

    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", -1),
                                                      ("grpc.max_send_message_length", -1)])
    stub = pb_grpc.TeacherStub(channel)
    for _ in range(10):  # the server's first batches are slower
        client.infer(x)
        stub.Infer(request())
    rows = [("encode", "-", *per_call(calls, lambda: [request().SerializeToString() for _ in range(calls)])),
            *client_rows(client, x, calls)]
    rows.append(("grpc blocking", 1, *per_call(calls, lambda: [codec.decode(stub.Infer(request()).outputs["logits"])
                                                            for _ in range(calls)])))
    rows += [("grpc futures", depth, *per_call(calls, lambda: in_flight(
        calls, depth, lambda: stub.Infer.future(request()), lambda f: codec.decode(f.result().outputs["logits"]))))
        for depth in (1, 4)]
    client.close()
    channel.close()
    return rows


def measure_triton(url: str, images: int, calls: int) -> list[tuple[str, int | str, float, float]]:
    import numpy as np
    import torch
    import tritonclient.grpc as tc

    from student_trainer.teachers import connect

    torch.set_num_threads(1)
    client = connect(url, wire_dtype="float16")
    x = torch.randn(images, *client.describe().input_shape)
    config = client.model_config
    bare = tc.InferenceServerClient(urlsplit(url).netloc)
    array = x.numpy().astype(np.float16)

    def bare_infer():
        inp = tc.InferInput(config.input["name"], list(array.shape), "FP16")
        inp.set_data_from_numpy(array)
        out = config.outputs["logits"]
        return bare.infer(client.model, [inp], outputs=[tc.InferRequestedOutput(out)]).as_numpy(out)

    for _ in range(10):  # the server's first batches are slower
        client.infer(x)
        bare_infer()
    rows = [*client_rows(client, x, calls),
            ("tritonclient blocking", 1, *per_call(calls, lambda: [bare_infer() for _ in range(calls)]))]
    client.close()
    bare.close()
    return rows


if __name__ == "__main__":
    main()
