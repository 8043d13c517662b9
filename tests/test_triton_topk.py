"""Top-k answers over Triton (``logits.topK``, UINT8 [4K + 2] a row): the same dense logits the gRPC path
and ``common.reductions.reduce`` give, 4K + 2 bytes an image on the wire, the fixed list of K a Triton
model serves, and a short training run asking for them. One Triton server for the module (resnet8,
seed 0, 10 classes: the weights of ``random_teacher``), stopped with SIGINT."""

import numpy as np
import pytest
import torch

from common.reductions import reduce
from student_trainer.cli import main as train
from student_trainer.teachers import connect
from student_trainer.teachers.triton_config import unpack_top_k
from teacher_server.triton_backend import (pack_top_k, teacher_parameters, top_k_outputs, top_k_served,
                                           triton_max_batch)
from tests.conftest import train_args
from tests.test_triton import start_triton_teacher, stop_triton_teacher

SERVED = "1, 2, 3, 5, 10"  # TOP_K_SERVED up to the 10 classes


@pytest.fixture(scope="module")
def triton_url(tmp_path_factory):
    """``python -m teacher_server --backend triton`` on free localhost ports: its triton:// URL."""
    tmp = tmp_path_factory.mktemp("triton_topk")
    proc, ports, log = start_triton_teacher(tmp, "--max-batch", "64", "--instances", "1", "--triton-open-endpoints")
    yield f"triton://127.0.0.1:{ports['grpc']}/teacher?metrics_port={ports['metrics']}"
    stop_triton_teacher(proc, log, tmp)


def _images(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).half()


def test_rows_pack_and_unpack_to_the_reduction(random_teacher):
    """No server: each row is its image's K int16 indices, K float16 values and float16 rest."""
    logits, _ = random_teacher.forward(_images(4), ["logits"])
    logits = logits["logits"]
    assert list(top_k_outputs(random_teacher)) == [f"logits.top{k}" for k in (1, 2, 3, 5, 10)]
    assert teacher_parameters(random_teacher, top_k_served(10))["top_k"] == "1,2,3,5,10"
    assert teacher_parameters(random_teacher)["top_k"] == ""  # an exported model: no top-k outputs
    assert triton_max_batch(random_teacher, 64, "float16", top_k_served(10)) == 64
    for k in (1, 5, 10):
        rows = pack_top_k(logits, k).numpy()
        assert rows.dtype == np.uint8 and rows.shape == (4, 4 * k + 2)
        assert torch.equal(unpack_top_k(rows, k, 10), reduce(f"top{k}", logits))
        for r, row in enumerate(rows):
            idx = np.frombuffer(row[:2 * k].tobytes(), "<i2")
            values = np.frombuffer(row[2 * k:4 * k].tobytes(), "<f2")
            assert set(idx.tolist()) == set(logits[r].topk(k).indices.tolist())
            assert np.array_equal(values, logits[r, idx.astype(np.int64)].half().numpy())
            rest = np.frombuffer(row[4 * k:].tobytes(), "<f2")[0]
            others = [c for c in range(10) if c not in idx]
            if others:  # the rest is the value of every other class in the rebuilt logits
                assert reduce(f"top{k}", logits)[r, others].eq(float(rest)).all()
    bad = pack_top_k(logits, 5).numpy().copy()
    bad[2, :2] = np.frombuffer(np.array([10], "<i2").tobytes(), np.uint8)  # class 10 of 10
    with pytest.raises(ValueError, match="row 2 has class index 10"):
        unpack_top_k(bad, 5, 10)
    with pytest.raises(ValueError, match=r"uint8 \[N, 22\]"):
        unpack_top_k(bad[:, :20], 5, 10)


def test_top_k_answers_equal_the_reduction_of_the_same_logits(triton_url, random_teacher, grpc_teacher):
    x = _images(6, seed=1)
    keys = ["logits", "logits.top1", "logits.top5", "logits.top10"]
    with connect(triton_url) as client:
        got = client.infer(x, outputs=keys)
    with connect(grpc_teacher[0]) as client:
        over_grpc = client.infer(x, outputs=keys)
    here, _ = random_teacher.forward(x, ["logits"])
    for k in (1, 5, 10):
        key = f"logits.top{k}"
        assert got[key].dtype == torch.float32 and got[key].shape == (6, 10), key
        # one forward answers both: the top-k answer is exactly the reduction of its own logits
        assert torch.equal(got[key], reduce(f"top{k}", got["logits"])), key
        assert torch.equal(over_grpc[key], reduce(f"top{k}", over_grpc["logits"])), key
        # another process's forward of the same images: float16 values one rounding apart at most
        for other in (over_grpc[key], reduce(f"top{k}", here["logits"])):
            assert torch.allclose(got[key], other, rtol=2e-3, atol=1e-3), key
    assert torch.equal(got["logits.top10"], got["logits"].half().float())  # K = C: every logit, float16


def test_a_top5_answer_is_22_bytes_an_image_on_the_wire(triton_url):
    import tritonclient.grpc as tc

    address = triton_url.split("//")[1].split("/")[0]
    client = tc.InferenceServerClient(address)
    meta = client.get_model_metadata("teacher")
    outputs = {o.name: (o.datatype, list(o.shape)) for o in meta.outputs}
    assert {n: v for n, v in outputs.items() if ".top" in n} == {
        f"logits.top{k}": ("UINT8", [-1, 4 * k + 2]) for k in (1, 2, 3, 5, 10)}
    params = client.get_model_config("teacher", as_json=True)["config"]["parameters"]
    assert params["top_k"]["string_value"] == "1,2,3,5,10"
    assert params["reductions"]["string_value"] == "none,attention,pool"
    x = _images(8, seed=2)
    images = tc.InferInput("images", list(x.shape), "FP16")
    images.set_data_from_numpy(x.numpy())
    raw = client.infer("teacher", [images], outputs=[tc.InferRequestedOutput("logits.top5")]).as_numpy("logits.top5")
    client.close()
    assert raw.dtype == np.uint8 and raw.shape == (8, 22) and raw.nbytes == 8 * 22
    received = {}
    with connect(triton_url) as teacher:
        for key in ("logits", "logits.top5"):
            before = teacher.counters.bytes_received
            teacher.infer(x, outputs=[key])
            received[key] = teacher.counters.bytes_received - before
    assert 8 * 22 < received["logits.top5"] < 8 * 22 + 200
    assert received["logits"] - received["logits.top5"] > 8 * (40 - 22) - 20


def test_the_teacher_info_lists_no_top_k_output_as_a_feature(triton_url, random_teacher):
    with connect(triton_url) as client:
        info = client.describe()
    assert info.feature_names == random_teacher.feature_names
    assert info.output_shapes == dict(random_teacher.output_shapes)
    assert info.reductions == ["none", "attention", "pool"] and info.num_classes == 10


def test_a_k_triton_does_not_serve_is_one_line_and_plain_logits_still_work(triton_url, random_teacher):
    x = _images(3, seed=3)
    with connect(triton_url) as client:
        for key in ("logits.top7", "logits.top11"):
            with pytest.raises(ValueError) as err:
                client.infer(x, outputs=["logits", key])
            assert str(err.value) == (f"this Triton teacher serves top-k answers for K in {SERVED} (logits.topK); "
                                      f"asked for {key}; the gRPC server serves any K")
        got = client.infer(x, outputs=["logits"])
    want, _ = random_teacher.forward(x, ["logits"])
    assert torch.allclose(got["logits"], want["logits"], atol=1e-5, rtol=1e-5)


def test_a_training_run_asks_triton_for_top_k_answers(triton_url, tmp_path, capsys):
    s = train(train_args(tmp_path, "--method", "kd", "--answer-topk", "5", "--teacher-url", triton_url,
                         "--batch-size", "16", "--train-size", "32", "--no-tensorboard"))
    assert s["steps"] == 2 and s["teacher_images"] == 32
    assert s["bytes_received"] < 32 * 22 + 2 * 200
    with pytest.raises(SystemExit) as exit_:
        train(train_args(tmp_path / "seven", "--method", "kd", "--answer-topk", "7", "--teacher-url", triton_url,
                         "--train-size", "16", "--no-tensorboard"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"student_trainer: error: this Triton teacher serves top-k answers for K in {SERVED} "
                   "(logits.topK); asked for logits.top7; the gRPC server serves any K"], err
