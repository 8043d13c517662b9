"""A JPEG folder served end to end: view recipes instead of pixels, the answers replayed from a store, and two
copies of a folder proven the same from what their files hold. A real gRPC server on localhost holds its own
copy of the folder; one server for the module."""
import os
import shutil

import grpc
import numpy as np
import pytest
import torch

from common.answer_store import open_store
from common.teacher_model import load_teacher
from common.views import Views
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.cli import main as train
from teacher_server.recipes import load_data
from teacher_server.server import build_server
from tests.test_image_folders import write_folder

SHAPE, CLASSES = (3, 32, 32), 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("folder") / "pets", train_per_class=8)


@pytest.fixture(scope="module")
def served(folder, tmp_path_factory):
    """A server holding its own copy of the folder, with a recipe store: (url, servicer, data)."""
    teacher = load_teacher(arch="resnet8", num_classes=CLASSES, input_shape=SHAPE, seed=0)
    data = load_data(f"folder:{folder}", None, input_shape=SHAPE, num_classes=CLASSES)
    store = open_store(f"lmdb:{tmp_path_factory.mktemp('recipe-store')}")
    server, servicer, port = build_server(teacher, port=0, max_batch=32, data=data, answer_store=store)
    yield f"grpc://127.0.0.1:{port}", servicer, data
    server.stop(grace=None).wait()
    store.close()


def _train(root, out, *flags):
    return train(["--dataset", f"folder:{root}", "--image-size", "32", "--arch", "resnet8", "--epochs", "1",
                  "--workers", "0", "--no-progress", "--no-tensorboard", "--out", str(out), "--batch-size", "8",
                  "--test-size", "4", "--log-level", "WARNING", *flags])


def _weights(run) -> dict:
    return torch.load(run / "last.pt", weights_only=True)["state_dict"]


def test_a_unix_run_with_recipes_ends_with_the_pixels_runs_weights_and_exact_counts(folder, served, tmp_path):
    url, servicer, _ = served
    runs = {}
    for send in ("pixels", "recipes"):
        before = servicer.counters.snapshot()
        runs[send] = s = _train(folder, tmp_path / send, "--method", "unix", "--k", "6", "--teacher-url", url,
                                "--wire-dtype", "float32", "--send", send)
        after = servicer.counters.snapshot()
        assert s["teacher_images"] == 3 * 6 == s["server_images_delta"] == after["images"] - before["images"]
        assert after["rendered_images"] - before["rendered_images"] == (18 if send == "recipes" else 0)
    pixels, recipes = _weights(tmp_path / "pixels"), _weights(tmp_path / "recipes")
    assert all(torch.equal(pixels[k], recipes[k]) for k in pixels)
    assert runs["recipes"]["bytes_sent"] < runs["pixels"]["bytes_sent"] / 20


def test_a_second_run_of_recipes_costs_the_server_no_forwards(folder, served, tmp_path):
    url, servicer, _ = served
    flags = ["--method", "kd", "--teacher-url", url, "--send", "recipes", "--seed", "5"]
    _train(folder, tmp_path / "first", *flags)
    before = servicer.counters.snapshot()
    s = _train(folder, tmp_path / "again", *flags)
    after = servicer.counters.snapshot()
    assert s["teacher_images"] == 24 and after["forward_images"] == before["forward_images"]
    assert after["store_images"] - before["store_images"] == 24


def test_replay_on_a_folder_asks_the_teacher_once_per_stored_view(folder, served, tmp_path):
    url, servicer, _ = served
    store = f"lmdb:{tmp_path / 'replay'}"
    before = servicer.counters.snapshot()
    first = _train(folder, tmp_path / "first", "--query", "replay", "--loss", "kd", "--views", "1",
                   "--replay-store", store, "--teacher-url", url, "--epochs", "2")
    middle = servicer.counters.snapshot()
    assert first["teacher_images"] == 24 == middle["images"] - before["images"]  # epoch 2 replays every view
    second = _train(folder, tmp_path / "second", "--query", "replay", "--loss", "kd", "--views", "1",
                    "--replay-store", store, "--teacher-url", url, "--seed", "3")
    assert second["teacher_images"] == 0 == servicer.counters.snapshot()["images"] - middle["images"]


def _refusal(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        _train(*args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_copy_at_another_path_is_the_same_data_and_one_changed_byte_is_refused(folder, served, tmp_path, capsys):
    url, _, _ = served
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder, copy)
    for path in (copy / "train").rglob("*.*"):
        os.utime(path, (1_000_000, 1_000_000))  # other times: the content is what counts
    s = _train(copy, tmp_path / "copy", "--method", "kd", "--teacher-url", url, "--send", "recipes",
               "--max-steps", "1")
    assert s["teacher_images"] == 8
    changed = copy / "train" / "dog" / "3.jpg"
    data = bytearray(changed.read_bytes())
    data[-3] ^= 1
    changed.write_bytes(bytes(data))
    err = _refusal(capsys, copy, tmp_path / "changed", "--method", "kd", "--teacher-url", url, "--send", "recipes")
    assert "train/dog/3.jpg differs" in err and "--send pixels" in err, err
    err = _refusal(capsys, folder, tmp_path / "other-size", "--method", "kd", "--teacher-url", url, "--send",
                   "recipes", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert "views made differently" in err and "mean" in err, err


def test_a_recipe_the_servers_files_cannot_render_is_invalid_argument_and_nothing_is_stored(served):
    url, servicer, data = served
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        _refused_and_served_on(pb_grpc.TeacherStub(channel), servicer, data)


def _refused_and_served_on(stub, servicer, data):
    good = Views(data.views.draw(0, 1, torch.arange(3)))
    outside = good.as_array()
    outside[1, 3] = 10_000  # a box taller than its image
    stored_before = servicer.counters.snapshot()["store_images"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Infer(pb.InferRequest(views=pb.ViewRecipes(rows=outside.astype("<i8").tobytes())), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lies outside" in err.value.details()
    again = stub.Infer(pb.InferRequest(views=pb.ViewRecipes(rows=outside.astype("<i8").tobytes()[:104])),
                       timeout=30)  # the first row alone is fine, and the server goes on answering
    assert list(again.outputs["logits"].shape) == [1, CLASSES]
    with pytest.raises(grpc.RpcError):
        stub.Infer(pb.InferRequest(views=pb.ViewRecipes(rows=outside.astype("<i8").tobytes())), timeout=30)
    assert servicer.counters.snapshot()["store_images"] == stored_before  # nothing kept for the bad request
    manifest = stub.Manifest(pb.ManifestRequest(start=0, count=3), timeout=30)
    assert manifest.files == 24 and manifest.path == data.views.paths[0] and len(manifest.digest) == 64
    assert manifest.range_digest == data.views.manifest.range_digest(0, 3)[0]
    assert np.array_equal(Views.from_array(good.as_array()).as_array(), good.as_array())
