"""python -m teacher_server.healthcheck: ask a teacher's gRPC health service whether it serves.

    python -m teacher_server.healthcheck --address 127.0.0.1:50051
    python -m teacher_server.healthcheck --address 127.0.0.1:50051 --tls-ca ca.pem --tls-server-name teacher

Exit status 0 only when ``grpc.health.v1.Health/Check`` answers SERVING; 1 for
anything else (NOT_SERVING while loading or draining, an unknown service, no
answer within ``--timeout``, a refused TLS handshake), with one line saying
which. That is the contract of Docker's HEALTHCHECK and of a Kubernetes
``exec`` probe. Kubernetes' native ``grpc:`` probe does the same call but
cannot speak TLS, so a TLS-only teacher is probed with this module instead.

It imports grpc and the health stubs only (no torch), so a probe costs a
fraction of a second. The health service needs no token (``teacher_server.auth``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

UNHEALTHY = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m teacher_server.healthcheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default="127.0.0.1:50051", help="HOST:PORT of the teacher's gRPC port")
    p.add_argument("--service", default="",
                   help="service to ask about ('' = the whole server, or unixkd.teacher.v1.Teacher)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds for the whole check")
    p.add_argument("--tls-ca", help="the server speaks TLS: check its certificate against this PEM CA")
    p.add_argument("--tls-server-name",
                   help="with --tls-ca: the name the certificate must carry when --address is an IP "
                        "(e.g. 'teacher' when probing 127.0.0.1 inside the pod)")
    return p


def check(address: str, *, service: str = "", timeout: float = 3.0, tls_ca: str | None = None,
          tls_server_name: str | None = None) -> tuple[bool, str]:
    """``(serving, one line)`` for the health of ``service`` at ``address``."""
    options = [("grpc.enable_http_proxy", 0)]  # a probe of 127.0.0.1 must not go through $http_proxy
    if tls_ca:
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        credentials = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return False, f"{address}: no health answer: {e.code().name}: {e.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address} {service or '(server)'}: {status}"


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse's usage error is 2, which Docker reserves: report unhealthy
        return UNHEALTHY if e.code else 0
    if args.tls_server_name and not args.tls_ca:
        print("--tls-server-name needs --tls-ca", file=sys.stderr)
        return UNHEALTHY
    try:
        serving, line = check(args.address, service=args.service, timeout=args.timeout, tls_ca=args.tls_ca,
                              tls_server_name=args.tls_server_name)
    except (OSError, ValueError) as e:  # an unreadable CA file, a malformed address
        serving, line = False, f"{args.address}: {e}"
    print(line, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
