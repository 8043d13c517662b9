"""The Prometheus endpoint of the gRPC teacher: scraped after known traffic, counters equal what was sent."""
import urllib.request

import grpc
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from common import codec
from protos import teacher_pb2 as pb
from student_trainer.teachers import connect
from teacher_server.server import build_server


def scrape(port: int) -> dict:
    """Every sample on /metrics as {(name, sorted labels): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture()
def metered_server(random_teacher):
    server, servicer, port = build_server(random_teacher, port=0, max_batch=64, metrics_port=0)
    yield port, server.metrics.port
    server.stop(grace=None).wait()
    server.metrics.close()


def test_scraped_counters_equal_what_was_sent(metered_server):
    port, metrics_port = metered_server
    clients = {}
    for client_id, batches in (("alice", (2, 5, 7)), ("bob", (4,))):
        with connect(f"grpc://127.0.0.1:{port}", client_id=client_id) as client:
            for n in batches:
                client.infer(torch.randn(n, 3, 32, 32))
            if client_id == "alice":  # one refused call: a NaN pixel
                bad = pb.InferRequest(images=codec.encode(torch.full((1, 3, 32, 32), float("nan"))))
                with pytest.raises(grpc.RpcError):
                    client.stub.Infer(bad, metadata=client._metadata)
            clients[client_id] = client.counters
    m = scrape(metrics_port)

    def value(name, **labels):
        return m[(name, tuple(sorted(labels.items())))]

    for client_id, c in clients.items():
        assert value("unixkd_teacher_requests_total", client_id=client_id) == c.requests
        assert value("unixkd_teacher_images_total", client_id=client_id) == c.images
        assert value("unixkd_teacher_request_bytes_total", client_id=client_id) == c.bytes_sent
        assert value("unixkd_teacher_response_bytes_total", client_id=client_id) == c.bytes_received
    assert clients["alice"].images == 14 and clients["bob"].images == 4
    assert value("unixkd_teacher_request_failures_total", client_id="alice", code="INVALID_ARGUMENT") == 1
    assert value("unixkd_teacher_batch_size_images_count") == 4
    assert value("unixkd_teacher_batch_size_images_sum") == 18
    assert value("unixkd_teacher_batch_size_images_bucket", le="4.0") == 2  # batches of 2 and 4
    for histogram in ("forward", "queue", "request"):
        assert value(f"unixkd_teacher_{histogram}_seconds_count") == 4
    assert 0 < value("unixkd_teacher_forward_seconds_sum") <= value("unixkd_teacher_request_seconds_sum")
    assert 0 < value("unixkd_teacher_busy_ratio") <= 1
    assert value("unixkd_teacher_inflight_requests") == 0
    assert value("unixkd_teacher_model_info", model="resnet8-random-seed0", arch="resnet8", device="cpu",
                 compute_dtype="float32") == 1


def test_two_servers_in_one_process_keep_their_own_counts(metered_server, grpc_teacher):
    port, metrics_port = metered_server
    with connect(f"grpc://127.0.0.1:{port}", client_id="only-here") as client:
        client.infer(torch.randn(3, 3, 32, 32))
    url, _ = grpc_teacher  # another live server in this process, with its own registry
    with connect(url, client_id="only-there") as client:
        client.infer(torch.randn(2, 3, 32, 32))
    m = scrape(metrics_port)
    assert m[("unixkd_teacher_images_total", (("client_id", "only-here"),))] == 3
    assert not any(labels == (("client_id", "only-there"),) for _, labels in m)


def test_client_ids_that_are_not_plain_names_are_lumped():
    from teacher_server.metrics import TeacherMetrics

    metrics = TeacherMetrics(max_batch=8, max_clients=2)
    assert [metrics.client_label(c) for c in ("a", "b", "c", "a", "", "x y", "z" * 65)] == \
        ["a", "b", "other", "a", "unknown", "invalid", "invalid"]
