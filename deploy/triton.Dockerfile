# syntax=docker/dockerfile:1
# NVIDIA's stock Triton (NGC image) serving a model repository written by `python -m teacher_server.export`.
#
#   docker build -f deploy/teacher.Dockerfile -t unix-kd:0.1.0 .          # first: the exporter lives there
#   docker build -f deploy/triton.Dockerfile -t unix-kd-triton:0.1.0 \
#       --build-arg CHECKPOINT=experiments/teachers/fashion-mnist-resnet20.pt .
#   docker run --gpus all --rm -p 8000-8002:8000-8002 unix-kd-triton:0.1.0
#   python -m student_trainer --teacher-url triton://GPU_HOST:8001/teacher ...
#
# Why the NGC image and not our `--backend triton`: there the model runs in Triton's own C++ backend
# (ONNX Runtime with CUDA, or TensorRT), so dynamic batching and the model instances below run without a
# Python process in the request path. `--backend triton` (PyTriton) hands every batch over shared memory
# to a Python callable (p50 about 4 ms a call above in-process, against 1.6 ms for our gRPC server: README
# "Serving overhead") and its wheel is x86_64/glibc>=2.35 only: it is the way to run Triton without a
# container (development, CPU, tests).
# The unix-kd image can still run it: `docker run unix-kd:0.1.0 --backend triton --host 0.0.0.0 ...`
# (not tried in a container).
#
# Why ONNX and not TorchScript: a TorchScript file saved by our torch (2.14) must load in the LibTorch
# that the Triton release bundles (older), which is not guaranteed; ONNX opset 17 (IR version 8) loads in
# the ONNX Runtime of every Triton release since 22.x. `--format torchscript` works where the versions match.
#
# The instances, batch size and queueing delay are fixed when the repository is written: edit the RUN
# line below (`--instances N` = N copies of the model on each GPU; `--instance-kind cpu` for no GPU).
# tests/test_deploy.py runs the export RUN line and checks the repository it writes and the CMD below.
ARG UNIXKD_IMAGE=unix-kd:0.1.0
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${UNIXKD_IMAGE} AS export
ARG CHECKPOINT=experiments/teachers/fashion-mnist-resnet20.pt
COPY --chown=10001:10001 ${CHECKPOINT} /tmp/teacher.pt
RUN ["python", "-m", "teacher_server.export", "--checkpoint", "/tmp/teacher.pt", "--format", "onnx", \
     "--out", "/tmp/model_repository", "--model-name", "teacher", "--instances", "2", "--instance-kind", "gpu", \
     "--max-batch", "256", "--queue-delay-us", "100", "--input-dtype", "float16"]

FROM ${TRITON_IMAGE}
COPY --from=export /tmp/model_repository /models
# HTTP (KServe v2 + /v2/health/*), gRPC (KServe v2: what the triton:// client speaks), Prometheus /metrics.
EXPOSE 8000 8001 8002
# Ready = the server is up and every model in the repository is loaded (--strict-readiness).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=3).status == 200 else 1)"]
# The image's own ENTRYPOINT (nvidia_entrypoint.sh) runs this.
CMD ["tritonserver", "--model-repository=/models", "--strict-readiness=true", "--exit-on-error=true", \
     "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]
