"""The teacher on a real Triton server (``python -m teacher_server --backend triton``) and the
``triton://`` client: readiness, metadata, logits, counts from Triton's own statistics and metrics,
a training run, and bad input. One server process for the module, stopped with SIGINT."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from student_trainer.cli import main as train
from student_trainer.teachers import connect
from tests.conftest import train_args

ROOT = Path(__file__).resolve().parents[1]
MAX_BATCH = 64


def triton_unavailable() -> str | None:
    """Why this machine cannot run PyTriton's tritonserver at all (None if it can)."""
    try:
        import pytriton
        from pytriton.utils.distribution import get_libs_path
    except ImportError as e:
        return f"nvidia-pytriton is not installed ({e})"
    binary = Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
    env = dict(os.environ, LD_LIBRARY_PATH=str(get_libs_path()))
    try:
        r = subprocess.run([str(binary), "--help"], check=False, env=env, capture_output=True, text=True, timeout=60)
    except OSError as e:
        return f"cannot execute {binary}: {e}"
    if "Usage: tritonserver" not in r.stdout + r.stderr:
        return f"tritonserver does not run here: {(r.stderr or r.stdout).strip().splitlines()[:1]}"
    return None


def _stop(proc: subprocess.Popen) -> int:
    """SIGINT (what Triton obeys), a second one if the first was not enough, then wait."""
    for _ in range(2):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                continue
    proc.kill()
    proc.wait()
    return -9


def start_triton_teacher(tmp: Path, *flags: str):
    """``python -m teacher_server --backend triton`` (a resnet8, 10 classes, 3x32x32, with ``flags``) on free
    localhost ports, ready to infer: (the process, its ports, the log file); stop it with ``stop_triton_teacher``.
    Skips the test where Triton cannot run here."""
    reason = triton_unavailable()
    if reason:
        pytest.skip(reason)
    from teacher_server.triton_backend import free_port

    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    assert len(set(ports.values())) == 3
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "teacher_server", "--backend", "triton", "--arch", "resnet8", "--num-classes", "10",
         "--input-shape", "3,32,32", "--seed", "0", *flags, "--port", str(ports["grpc"]),
         "--http-port", str(ports["http"]), "--metrics-port", str(ports["metrics"]), "--port-file", str(tmp / "port")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (tmp / "port").is_file() or not (tmp / "port").read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail("Triton teacher did not start:\n" + (tmp / "server.log").read_text()[-3000:])
        time.sleep(0.2)
    return proc, ports, log


def stop_triton_teacher(proc: subprocess.Popen, log, tmp: Path) -> None:
    assert _stop(proc) == 0, (tmp / "server.log").read_text()[-3000:]
    log.close()


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory):
    """``python -m teacher_server --backend triton`` on free localhost ports, ready to infer."""
    tmp = tmp_path_factory.mktemp("triton")
    proc, ports, log = start_triton_teacher(tmp, "--max-batch", str(MAX_BATCH), "--instances", "2",
                                            "--queue-delay-us", "500", "--triton-token-file", str(tmp / "token"))
    yield {"proc": proc, "ports": ports, "token_file": tmp / "token",
           "url": f"triton://127.0.0.1:{ports['grpc']}/teacher?metrics_port={ports['metrics']}"}
    stop_triton_teacher(proc, log, tmp)


def _images(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_server_reports_model_version_readiness_and_liveness(triton_server):
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(f"127.0.0.1:{triton_server['ports']['grpc']}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("teacher")
    meta = client.get_model_metadata("teacher")
    assert meta.name == "teacher" and list(meta.versions) == ["1"]
    assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("images", "FP16", [-1, 3, 32, 32])]
    assert [o.name for o in meta.outputs] == [
        "logits", "logits.pool", "stem", "stem.attention", "stem.pool", "stage1", "stage1.attention", "stage1.pool",
        "stage2", "stage2.attention", "stage2.pool", "stage3", "stage3.attention", "stage3.pool", "pool", "pool.pool",
        "logits.top1", "logits.top2", "logits.top3", "logits.top5", "logits.top10"]
    assert {o.name: list(o.shape) for o in meta.outputs}["stage2.attention"] == [-1, 16, 16]
    config = client.get_model_config("teacher", as_json=True)["config"]
    assert config["max_batch_size"] == MAX_BATCH
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "500"
    assert [g["count"] for g in config["instance_group"]] == [2]
    assert config["parameters"]["arch"]["string_value"] == "resnet8"
    assert config["parameters"]["reductions"]["string_value"] == "none,attention,pool"
    assert "dataset" not in config["parameters"]  # random weights: no checkpoint says what they learnt
    client.close()
    http = f"http://127.0.0.1:{triton_server['ports']['http']}"
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/teacher/versions/1/ready"):
        assert urllib.request.urlopen(http + path, timeout=10).status == 200


def test_logits_and_features_equal_the_in_process_forward(triton_server, random_teacher):
    x = _images(8).half()  # what travels: the server computes on exactly these values
    names = ["logits", *random_teacher.feature_names]
    expected, _ = random_teacher.forward(x, names)
    with connect(triton_server["url"]) as client:
        info = client.describe()
        got = client.infer(x, outputs=names)
    assert (info.arch, info.input_shape, info.num_classes, info.max_batch_size) == ("resnet8", (3, 32, 32), 10, 64)
    assert info.feature_names == random_teacher.feature_names and info.dataset is None
    assert info.flops_per_image == pytest.approx(random_teacher.flops_per_image)
    for name in names:
        assert got[name].dtype == torch.float32 and got[name].shape == expected[name].shape
        assert torch.allclose(got[name], expected[name], atol=1e-5, rtol=1e-5), name


def test_reduced_outputs_equal_the_same_reductions_of_the_in_process_features(triton_server, random_teacher):
    from common.reductions import parse_key, reduce

    x = _images(5, seed=2).half()
    full, _ = random_teacher.forward(x, ["logits", *random_teacher.feature_names])
    keys = ["stage1.attention", "stage2.attention", "stage3.attention", "stage3.pool", "stage1", "pool.pool",
            "logits"]
    with connect(triton_server["url"]) as client:
        info = client.describe()
        got = client.infer(x, outputs=keys)
    assert info.output_shapes == {"logits": (10,), "stem": (16, 32, 32), "stage1": (16, 32, 32),
                                  "stage2": (32, 16, 16), "stage3": (64, 8, 8), "pool": (64,)}
    assert info.reductions == ["none", "attention", "pool"]
    assert info.feature_names == random_teacher.feature_names
    for key in keys:
        name, reduction = parse_key(key)
        want = reduce(reduction, full[name])  # the client's own reduction of the in-process feature
        assert got[key].shape == want.shape and got[key].dtype == torch.float32, key
        assert torch.allclose(got[key], want, atol=1e-5, rtol=1e-5), key


def test_a_key_triton_does_not_offer_is_refused_and_the_server_keeps_serving(triton_server, random_teacher):
    import numpy as np
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(f"127.0.0.1:{triton_server['ports']['grpc']}")
    x = _images(2).half()
    images = tc.InferInput("images", list(x.shape), "FP16")
    images.set_data_from_numpy(x.numpy())
    for bad in ("pool.attention", "nope.pool", "stage3.max"):
        with pytest.raises(InferenceServerException) as err:
            client.infer("teacher", [images], outputs=[tc.InferRequestedOutput(bad)])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT", err.value
        assert bad in err.value.message()
    ok = client.infer("teacher", [images], outputs=[tc.InferRequestedOutput("stage3.attention")])
    want, _ = random_teacher.forward(x, ["stage3.attention"])
    np.testing.assert_allclose(ok.as_numpy("stage3.attention"), want["stage3.attention"].numpy(), atol=1e-5)
    client.close()


def test_reduced_outputs_cost_fewer_bytes_on_triton(triton_server):
    received = {}
    with connect(triton_server["url"]) as client:
        for key in ("stage1", "stage1.attention", "stage1.pool"):
            before = client.counters.bytes_received
            client.infer(_images(8), outputs=[key])
            received[key] = client.counters.bytes_received - before
    for key, values in (("stage1", 8 * 16 * 32 * 32), ("stage1.attention", 8 * 32 * 32), ("stage1.pool", 8 * 16)):
        assert values * 4 < received[key] < values * 4 + 200, key


def test_triton_statistics_count_exactly_what_the_client_sent(triton_server):
    with connect(triton_server["url"], token_file=triton_server["token_file"]) as client:
        before = client.server_stats()
        client.infer(_images(150))  # over the max batch: 64 + 64 + 22
        client.infer(_images(5))
        after = client.server_stats()
        c = client.counters
    assert before.source == after.source == "triton statistics (inference_count)"
    assert after.images - before.images == c.images == 155
    assert after.requests - before.requests == c.requests == 4
    # float16 images: 2 bytes a value, plus the request's framing
    assert 155 * 3 * 32 * 32 * 2 < c.bytes_sent < 155 * 3 * 32 * 32 * 2 + 4 * 200
    assert 155 * 10 * 4 < c.bytes_received < 155 * 10 * 4 + 4 * 200


def test_prometheus_metrics_count_when_statistics_need_a_token(triton_server):
    with connect(triton_server["url"]) as client:  # no token: statistics refused, metrics read
        before = client.server_stats()
        client.infer(_images(7))
        after = client.server_stats()
    assert after.source == "triton metrics (nv_inference_count)"
    assert (after.images - before.images, after.requests - before.requests) == (7, 1)


def test_training_run_counts_what_triton_counts(triton_server, tmp_path):
    s = train(train_args(tmp_path, "--method", "unix", "--teacher-url", triton_server["url"],
                         "--token-file", triton_server["token_file"], "--batch-size", "16", "--k", "12",
                         "--b", "8", "--train-size", "72"))
    assert s["steps"] == 5 and s["teacher_images"] == 4 * 12 + 6
    assert s["teacher_images"] == s["server_images_delta"]
    assert s["teacher_requests"] == s["server_requests_delta"] == 5
    assert s["server_stats_source"] == "triton statistics (inference_count)"
    assert json.loads((tmp_path / "summary.json").read_text())["server_stats_source"] == s["server_stats_source"]


def test_prefetch_and_a_feature_loss_count_what_triton_counts(triton_server, tmp_path):
    """The next batch's request is in flight while a step trains; every image is still counted once."""
    s = train(train_args(tmp_path, "--query", "unix", "--loss", "kd+at", "--prefetch", "1",
                         "--teacher-url", triton_server["url"], "--token-file", triton_server["token_file"],
                         "--batch-size", "16", "--k", "12", "--b", "8", "--train-size", "72"))
    assert s["steps"] == 5 and s["teacher_images"] == 4 * 12 + 6 == s["server_images_delta"]
    assert s["teacher_requests"] == s["server_requests_delta"] == 5


@pytest.mark.parametrize("loss", ["at", "sp", "fitnet", "pkt", "rkd", "vid", "crd", "dkd"])
def test_every_feature_loss_trains_against_triton(triton_server, tmp_path, loss):
    """Reduced features (stageN.attention) and full maps come back as Triton named outputs."""
    s = train(train_args(tmp_path, "--query", "unix", "--loss", loss, "--teacher-url", triton_server["url"],
                         "--token-file", triton_server["token_file"], "--batch-size", "16", "--k", "12",
                         "--b", "8", "--train-size", "32", "--no-tensorboard"))
    assert s["steps"] == 2 and s["teacher_images"] == 24 == s["server_images_delta"]


def test_nan_images_are_refused_and_the_server_keeps_serving(triton_server, random_teacher):
    import grpc

    with connect(triton_server["url"]) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.infer(torch.full((2, 3, 32, 32), float("nan")))
        assert "NaN" in err.value.details()
        assert client.infer(_images(2))["logits"].shape == (2, 10)


def _one_line_error(tmp_path, capsys, url, *extra) -> str:
    with pytest.raises(SystemExit) as exit_:
        train(train_args(tmp_path, "--method", "kd", "--teacher-url", url, "--train-size", "16", *extra))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_wire_dtype_the_model_does_not_take_is_one_line(triton_server, tmp_path, capsys):
    err = _one_line_error(tmp_path, capsys, triton_server["url"], "--wire-dtype", "float32")
    assert "takes float16 images; use --wire-dtype float16" in err


def test_a_model_triton_does_not_serve_is_one_line(triton_server, tmp_path, capsys):
    url = triton_server["url"].replace("/teacher?", "/nosuchmodel?")
    err = _one_line_error(tmp_path, capsys, url, "--connect-timeout", "1")
    assert "model 'nosuchmodel' is not ready" in err


def test_bad_urls_say_what_a_triton_url_looks_like():
    for url in ("triton://127.0.0.1:8001", "triton://127.0.0.1/teacher", "triton://127.0.0.1:8001/teacher?x=1"):
        with pytest.raises(ValueError, match="triton://127.0.0.1:8001/teacher"):
            connect(url)


def test_grpc_only_server_flags_are_refused_for_triton(capsys):
    from teacher_server.cli import main as serve

    with pytest.raises(SystemExit) as exit_:
        serve(["--backend", "triton", "--arch", "resnet8", "--token-file", "/tmp/x"])
    assert exit_.value.code == 2
    assert "--token-file: gRPC-backend options" in capsys.readouterr().err


def test_a_port_in_use_is_one_line_before_triton_starts(capsys):
    import socket

    from teacher_server.cli import main as serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            serve(["--backend", "triton", "--arch", "resnet8", "--port", "0", "--http-port", str(port)])
    assert exit_.value.code == 2
    assert f"--http-port {port}: cannot bind 127.0.0.1:{port}" in capsys.readouterr().err
