"""Replicas of our gRPC teacher (``grpc://H1:P1,H2:P2``): one channel target naming them all, and their counts.

Requests share one channel whose target lists every replica, so gRPC's own
``round_robin`` spreads them over the replicas that are up. The server counts
are read from each replica on its own and added up; a replica that cannot be
read leaves the sums unknown (None) and is named in ``source``.
"""
from __future__ import annotations

import socket
from typing import Callable

import grpc

from protos import teacher_pb2 as pb
from student_trainer.teachers.types import ServerStats

SUMMED = ("images", "requests", "bytes_in", "bytes_out")


def replica_target(replicas: list[str]) -> str:
    """One gRPC target naming every replica (``ipv4:A:P,B:Q``): gRPC's static address list."""
    resolved = []
    for replica in replicas:
        host, port = replica.rsplit(":", 1)
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError) as e:
            raise ValueError(f"teacher replica {replica!r}: cannot resolve it ({e})") from None
        resolved.append(infos[0][:1] + infos[0][4][:1] + (int(port),))
    families = {family for family, _, _ in resolved}
    if families == {socket.AF_INET}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for _, ip, port in resolved)
    if families == {socket.AF_INET6}:
        return "ipv6:" + ",".join(f"[{ip}]:{port}" for _, ip, port in resolved)
    raise ValueError(f"teacher replicas {', '.join(replicas)} mix IPv4 and IPv6 addresses: use one family")


def summed_stats(replicas: list[str], read: Callable[[str], pb.StatsResponse]) -> ServerStats:
    """Each replica's counts of this client (``read(replica)``, one Stats call, not retried) and their sums."""
    counts: dict[str, dict | None] = {}
    missing = []
    for replica in replicas:
        try:
            s = read(replica)
        except grpc.RpcError as e:
            counts[replica] = None
            missing.append(f"{replica} ({e.code().name})")
            continue
        counts[replica] = {key: getattr(s, key) for key in SUMMED}
    if missing:
        return ServerStats(images=None, requests=None, bytes_in=None, bytes_out=None, forward_seconds=None,
                           source=f"unavailable: replica {', '.join(missing)} could not be read",
                           replicas=counts, per_client=True)
    total = {key: sum(c[key] for c in counts.values()) for key in SUMMED}
    return ServerStats(**total, forward_seconds=None, per_client=True,
                       source=f"grpc Stats (this client's) summed over {len(counts)} replicas", replicas=counts)
