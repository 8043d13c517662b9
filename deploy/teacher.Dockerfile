# syntax=docker/dockerfile:1
# The UNIX-KD image: `python -m teacher_server` (our gRPC teacher service) by default; the same image
# holds the student trainer (`torchrun ... -m student_trainer`, see deploy/k8s/student-job.yaml) and
# the exporter (`python -m teacher_server.export`, used by deploy/triton.Dockerfile and deploy/k8s/triton/).
#
#   docker build -f deploy/teacher.Dockerfile -t unix-kd:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 \
#       -v $PWD/experiments/teachers/fashion-mnist-resnet20.pt:/models/teacher.pt:ro unix-kd:0.1.0
#   docker run --gpus all ... unix-kd:0.1.0 --checkpoint /models/teacher.pt --host 0.0.0.0 --port 50051 \
#       --metrics-port 9090 --metrics-host 0.0.0.0 --device cuda --half
#
# No CUDA base image is needed: torch's PyPI wheel (a CUDA build) brings the CUDA runtime libraries as
# pip packages, and the NVIDIA container toolkit (`--gpus all`, or the Kubernetes device plugin) mounts
# the driver. The same image runs on the CPU. About 6 GB, most of it torch and its CUDA libraries.
# Build context: the repository root; deploy/teacher.Dockerfile.dockerignore keeps .venv, runs, .git out.
# tests/test_deploy.py runs this file's ENTRYPOINT + CMD and HEALTHCHECK as they are here (no Docker).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Non-root, with a fixed numeric id so that Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 unixkd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/unixkd --create-home --shell /usr/sbin/nologin unixkd

WORKDIR /opt/unix-kd
COPY pyproject.toml README.md ./
COPY common ./common
COPY protos ./protos
COPY teacher_server ./teacher_server
COPY student_trainer ./student_trainer
RUN pip install . && mkdir -p /models && chown unixkd:unixkd /models

USER 10001:10001
WORKDIR /home/unixkd
# gRPC (Teacher service + grpc.health.v1) and the Prometheus endpoint.
EXPOSE 50051 9090

# The gRPC health service answers SERVING once the model is loaded and the port is open, NOT_SERVING
# while draining after SIGTERM; it needs no token. A TLS-only server: add --tls-ca/--tls-server-name.
# The port is fixed here: a CMD with another --port needs its own HEALTHCHECK (or --no-healthcheck).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "teacher_server.healthcheck", "--address", "127.0.0.1:50051", "--timeout", "3"]

# SIGTERM drains (health NOT_SERVING, calls in flight get --grace s): give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "teacher_server"]
# Defaults; `docker run IMAGE FLAGS...` replaces all of them (give --host 0.0.0.0 again), and so do a
# Kubernetes container's `args`. Binding 0.0.0.0 without --token-file or TLS logs a warning: inside a
# cluster, restrict who reaches the port (deploy/k8s/teacher-networkpolicy.yaml) or add a token.
CMD ["--checkpoint", "/models/teacher.pt", "--host", "0.0.0.0", "--port", "50051", \
     "--metrics-port", "9090", "--metrics-host", "0.0.0.0", "--grace", "30"]
