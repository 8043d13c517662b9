"""View recipes instead of pixels: the server renders them from its own copy of the data set.

A real gRPC server in this process holds a synthetic training split; its
answers to recipes equal its answers to the same images sent as pixels, a
malformed recipe is refused and the next request answered, the trainer refuses
in one line a server that renders from another split, and a short UNIX run
sends a small fraction of the pixels' bytes for the same teacher images.
"""
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from common import codec
from common.teacher_model import load_teacher
from common.views import StoredImages, Views, render_views
from protos import teacher_pb2 as pb
from protos import teacher_pb2_grpc as pb_grpc
from student_trainer.cli import main as train
from student_trainer.teachers import connect
from teacher_server.recipes import ServedData, load_data
from teacher_server.server import build_server

ROOT = Path(__file__).resolve().parents[1]
SHAPE, CLASSES, SIZE = (3, 32, 32), 10, 256
# The trainer's flags for the split the server holds (synthetic, generated at the teacher's shape).
DATA = ["--dataset", "synthetic", "--image-shape", "3,32,32", "--num-classes", "10", "--train-size", str(SIZE)]


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(arch="resnet8", num_classes=CLASSES, input_shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def served(teacher):
    """A server holding the synthetic split the trainer's DATA flags build: (url, servicer, data)."""
    data = load_data("synthetic", None, input_shape=SHAPE, num_classes=CLASSES, train_size=SIZE)
    server, servicer, port = build_server(teacher, port=0, max_batch=16, data=data)
    yield f"grpc://127.0.0.1:{port}", servicer, data
    server.stop(grace=None).wait()


def _views(stored: StoredImages, n: int, mixed: bool, seed: int = 0) -> Views:
    gen = torch.Generator().manual_seed(seed)
    main = Views(stored.draw(seed, 1, torch.randint(0, len(stored), (n,), generator=gen)))
    if not mixed:
        return main
    partner = Views(stored.draw(seed, 1, torch.randint(0, len(stored), (n,), generator=gen)))
    return main.mixed_with(partner, torch.rand(n, generator=gen))


def _rows(views: Views) -> bytes:
    return views.as_array().astype("<i8").tobytes()


def test_describe_says_the_data_set_the_server_renders_from(served):
    url, _, data = served
    with connect(url) as client:
        info = client.describe().data
    assert (info.name, info.size, info.fingerprint) == ("synthetic", SIZE, data.views.fingerprint)


@pytest.mark.parametrize("wire", ["float32", "float16"])
@pytest.mark.parametrize("mixed", [False, True])
def test_answers_to_recipes_equal_the_answers_to_their_pixels(served, teacher, wire, mixed):
    url, servicer, data = served
    views = _views(data.views, 40, mixed)  # over the max batch of 16: three chunks of recipes
    images = render_views(data.views, views)
    keys = ["logits", "stage3.pool"]
    before = servicer.counters.snapshot()
    with connect(url, wire_dtype=wire) as pixels, connect(url, wire_dtype=wire, send="recipes") as recipes:
        want = pixels.submit(images, keys).result()
        got = recipes.submit(images, keys, views=views).result()
        sent = recipes.counters.bytes_sent
        assert recipes.counters.images == 40 and recipes.counters.requests == 3
    after = servicer.counters.snapshot()
    for key in keys:
        assert got[key].shape == want[key].shape
        if wire == "float32":
            assert torch.equal(got[key], want[key]), key
        else:
            assert torch.allclose(got[key], want[key], atol=1e-3, rtol=1e-3), key
    if wire == "float32":  # and the pixels' answer is the teacher's own forward of the trainer's images
        assert torch.allclose(want["logits"], teacher.forward(images, ["logits"])[0]["logits"], atol=1e-5)
    assert after["rendered_images"] - before["rendered_images"] == 40
    assert after["images"] - before["images"] == 80
    assert sent < 40 * 120  # under 120 bytes an image, a 104-byte recipe with its share (pixels: 6144 in float16)


def _infer(stub, **fields):
    return stub.Infer(pb.InferRequest(**fields), timeout=30)


def _bad_rows(stored: StoredImages) -> dict[str, bytes]:
    good = _views(stored, 4, True).as_array()

    def edited(row, col, value, dtype=np.int64):
        a = good.copy()
        a[row, col] = np.array([value], dtype=dtype).view(np.int32)[0] if dtype == np.float32 else value
        return a.astype("<i8").tobytes()
    per = Views.PER_VIEW
    return {"sample out of range": edited(1, 0, len(stored)), "negative sample": edited(0, 0, -3),
            "crop beyond pad": edited(2, 1, stored.pad + 1), "partner crop beyond pad": edited(0, per + 2, 99),
            "box of another size": edited(1, 3, SHAPE[1] + 1),
            "flip in a set that never flips": edited(3, 5, 1), "mix 1.5": edited(0, -1, 1.5, np.float32),
            "NaN mix": edited(1, -1, np.nan, np.float32), "103 bytes": good.tobytes()[:103],
            "105 bytes": good.tobytes() + b"\x00", "zero rows": b""}


def test_a_malformed_recipe_gets_invalid_argument_and_the_next_request_is_answered(teacher):
    gen = torch.Generator().manual_seed(1)
    # uint8 images that are padded (pad 2) but never flipped, as a set trained without flips would be
    stored = StoredImages(torch.randint(0, 256, (20, *SHAPE), dtype=torch.uint8, generator=gen),
                          torch.arange(20) % CLASSES, 2, False, (0.5,) * 3, (0.25,) * 3)
    server, servicer, port = build_server(teacher, port=0, max_batch=8, data=ServedData("custom", stored))
    good = Views(stored.draw(0, 1, torch.arange(5)))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.TeacherStub(channel)
            for what, rows in _bad_rows(stored).items():
                with pytest.raises(grpc.RpcError) as err:
                    _infer(stub, views=pb.ViewRecipes(rows=rows))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
                assert "\n" not in err.value.details() and len(err.value.details()) < 400, what
                ok = _infer(stub, views=pb.ViewRecipes(rows=_rows(good)), request_id=what)
                assert ok.request_id == what and list(ok.outputs["logits"].shape) == [5, CLASSES]
            with pytest.raises(grpc.RpcError) as err:  # images and recipes at once
                _infer(stub, views=pb.ViewRecipes(rows=_rows(good)),
                       images=codec.encode(render_views(stored, good), "float32"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "both" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:  # more rows than the max batch
                _infer(stub, views=pb.ViewRecipes(rows=_rows(Views(stored.draw(0, 1, torch.arange(9))))))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop(grace=None).wait()
    assert servicer.counters.snapshot()["failed_requests"] == len(_bad_rows(stored)) + 2


def test_recipes_to_a_server_without_a_data_set_are_refused(grpc_teacher):
    url, _ = grpc_teacher
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        stub = pb_grpc.TeacherStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            plain = StoredImages(torch.zeros(2, *SHAPE), torch.zeros(2, dtype=torch.long), 0, False, (0.5,) * 3,
                                 (0.5,) * 3)
            _infer(stub, views=pb.ViewRecipes(rows=_rows(Views(plain.draw(0, 1, torch.arange(2))))))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "holds no data set" in err.value.details() and "--dataset" in err.value.details()
        _infer(stub, images=codec.encode(torch.zeros(1, *SHAPE), "float32"))  # and it goes on answering


def _unix(tmp_path, url, send, *extra):
    return train([*DATA, "--arch", "resnet8", "--epochs", "1", "--workers", "0", "--no-progress",
                  "--no-tensorboard", "--out", str(tmp_path / send), "--test-size", "32", "--method", "unix",
                  "--teacher-url", url, "--batch-size", "32", "--k", "16", "--max-steps", "3", "--send", send,
                  "--log-level", "WARNING", *extra])


def test_a_unix_run_sends_recipes_in_a_twentieth_of_the_bytes_and_the_server_counts_its_images(served, tmp_path):
    url, servicer, _ = served
    runs = {}
    for send in ("pixels", "recipes"):
        before = servicer.counters.snapshot()
        runs[send] = s = _unix(tmp_path, url, send)
        after = servicer.counters.snapshot()
        assert s["send"] == send and s["teacher_images"] == 3 * 16
        assert s["server_images_delta"] == s["teacher_images"] == after["images"] - before["images"]
        assert s["bytes_sent"] == s["server_bytes_in_delta"]
        rendered = after["rendered_images"] - before["rendered_images"]
        assert rendered == (s["teacher_images"] if send == "recipes" else 0)
    per_image = {send: s["bytes_sent"] / s["teacher_images"] for send, s in runs.items()}
    assert per_image["recipes"] < per_image["pixels"] / 20, per_image
    assert _epoch_line(tmp_path / "recipes") == _epoch_line(tmp_path / "pixels")  # the same answers, the same run


def _epoch_line(run: Path) -> dict:
    """The run's epoch figures that depend on the teacher's answers: losses and top-1."""
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return {k: v for k, v in line.items() if k.startswith("loss") or k == "top1"}


def test_a_subset_of_a_real_split_renders_from_the_servers_whole_split(teacher, tmp_path):
    """--train-size on CIFAR-10 (padded crops and flips): recipes name images by their place in the whole
    split, which the server holds; the run is the pixels' run to the bit (float32 on the wire)."""
    from tests.test_data import write_cifar10

    write_cifar10(tmp_path, per_batch=8)  # 40 training images
    data = load_data("cifar10", str(tmp_path), input_shape=SHAPE, num_classes=CLASSES)
    server, servicer, port = build_server(teacher, port=0, max_batch=16, data=data)
    try:
        for send in ("pixels", "recipes"):
            s = train(["--dataset", "cifar10", "--data-root", str(tmp_path), "--train-size", "24", "--test-size",
                       "3", "--arch", "resnet8", "--epochs", "1", "--workers", "0", "--no-progress",
                       "--no-tensorboard", "--out", str(tmp_path / send), "--method", "unix", "--batch-size", "12",
                       "--k", "8", "--teacher-url", f"grpc://127.0.0.1:{port}", "--wire-dtype", "float32",
                       "--send", send, "--log-level", "WARNING"])
            assert s["teacher_images"] == 16 == s["server_images_delta"]
    finally:
        server.stop(grace=None).wait()
    assert servicer.counters.snapshot()["rendered_images"] == 16
    assert _epoch_line(tmp_path / "recipes") == _epoch_line(tmp_path / "pixels")


def _one_line_refusal(capsys, *flags) -> str:
    with pytest.raises(SystemExit) as e:
        train(flags)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_recipes_the_trainer_cannot_send_are_refused_in_one_line(served, grpc_teacher, tmp_path, capsys):
    url, _, _ = served
    base = [*DATA, "--arch", "resnet8", "--workers", "0", "--out", str(tmp_path), "--method", "kd",
            "--send", "recipes"]
    err = _one_line_refusal(capsys, *base, "--teacher-url", url, "--augment-draws", "per-item")
    assert "--augment-draws per-item" in err and "--send pixels" in err
    plain, _ = grpc_teacher  # a 3x32x32 teacher that holds no data set
    err = _one_line_refusal(capsys, *base, "--teacher-url", plain)
    assert "holds no data set" in err and "--dataset synthetic" in err
    err = _one_line_refusal(capsys, *base, "--teacher-url", "local:/nonexistent.pt")
    assert "--send does not apply to local: teachers" in err


def test_a_server_holding_another_split_is_refused_by_the_trainer_cli_in_one_line(served, tmp_path):
    url, _, data = served
    done = subprocess.run([sys.executable, "-m", "student_trainer", *DATA, "--data-seed", "1", "--arch", "resnet8",
                           "--workers", "0", "--out", str(tmp_path), "--method", "kd", "--teacher-url", url,
                           "--send", "recipes"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(err) == 1, done.stderr
    assert "synthetic" in err[0] and data.views.fingerprint[:12] in err[0] and "fingerprint" in err[0], err[0]


def test_a_server_given_a_folder_its_teacher_cannot_take_says_so_in_one_line(tmp_path, capsys):
    from teacher_server.cli import main as serve
    from tests.test_image_folders import write_folder

    with pytest.raises(SystemExit) as e:
        serve(["--arch", "resnet8", "--input-shape", "1,32,32", "--port", "0",
               "--dataset", f"folder:{write_folder(tmp_path, 1, 1)}"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "has 3x32x32 images" in err, err


# --- answers kept in a store (--recipe-store) ------------------------------------------------------------

@pytest.fixture()
def stored_server(teacher, tmp_path):
    from common.answer_store import open_store

    data = load_data("synthetic", None, input_shape=SHAPE, num_classes=CLASSES, train_size=SIZE)
    store = open_store(f"lmdb:{tmp_path / 'answers'}")
    server, servicer, port = build_server(teacher, port=0, max_batch=16, data=data, answer_store=store)
    yield f"grpc://127.0.0.1:{port}", servicer, data
    server.stop(grace=None).wait()
    store.close()


def test_a_second_identical_run_costs_the_server_no_forwards(stored_server, tmp_path):
    url, servicer, _ = stored_server
    first = _unix(tmp_path / "first", url, "recipes", "--client-id", "first")
    before = servicer.counters.snapshot()
    second = _unix(tmp_path / "second", url, "recipes", "--client-id", "second")
    after = servicer.counters.snapshot()
    assert first["teacher_images"] == second["teacher_images"] == second["server_images_delta"] == 48
    assert after["forwards"] == before["forwards"] and after["forward_images"] == before["forward_images"]
    assert after["store_images"] - before["store_images"] == 48
    assert after["rendered_images"] == before["rendered_images"]  # a kept answer is not even rendered
    clients = {c: servicer.counters.clients()[c] for c in ("first", "second")}
    assert (clients["first"]["store_images"], clients["second"]["store_images"]) == (0, 48)
    assert clients["second"]["flops_served"] == 0
    scraped = servicer.metrics.registry.get_sample_value("unixkd_teacher_store_images_total",
                                                         {"client_id": "second"})
    assert scraped == 48
    assert _epoch_line(tmp_path / "second" / "recipes") == _epoch_line(tmp_path / "first" / "recipes")


def test_only_the_rows_the_store_lacks_are_forwarded(stored_server):
    url, servicer, data = stored_server
    views = _views(data.views, 12, mixed=True, seed=5)
    images = render_views(data.views, views)
    keys = ["logits", "stage2.attention"]
    with connect(url, wire_dtype="float16", send="recipes") as client, \
            connect(url, wire_dtype="float16") as pixels:
        client.submit(images[:8], keys, views=views.take(torch.arange(8))).result()  # rows 0-7 kept
        before = servicer.counters.snapshot()
        got = client.submit(images, keys, views=views).result()
        after = servicer.counters.snapshot()
        want = pixels.submit(images, keys).result()
    assert after["forward_images"] - before["forward_images"] == 4
    assert after["store_images"] - before["store_images"] == 8
    assert after["rendered_images"] - before["rendered_images"] == 4
    for key in keys:
        assert torch.allclose(got[key], want[key], atol=1e-3, rtol=1e-3), key
