"""TeacherModule: the served teacher as an nn.Module, alone and as the teacher of timm's LogitDistillationTask."""
import json
import math
import socket
from concurrent.futures import Future

import pytest
import torch

from student_trainer import TeacherModule
from student_trainer.library.teacher_module import resolve_normalisation
from student_trainer.teachers import TeacherInfo, TeacherUnavailable
from student_trainer.teachers.types import ServedDataSet
from tests.conftest import train_task

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def teacher(grpc_teacher):
    """The fixture's server (resnet8, 10 classes, 3x32x32) with float32 on the wire."""
    with TeacherModule(grpc_teacher[0], wire_dtype="float32") as module:
        yield module


def test_logits_are_the_in_process_teachers_at_float32_on_the_wire(teacher, random_teacher):
    x = images()
    got = teacher(x)
    assert got.shape == (4, 10) and got.dtype == torch.float32 and got.device == x.device
    assert torch.equal(got, random_teacher.forward(x, ["logits"])[0]["logits"])


def test_answers_in_the_inputs_dtype_without_gradients(teacher):
    x = images().requires_grad_()
    with torch.enable_grad():
        logits = teacher(x)
    assert not logits.requires_grad and logits.grad_fn is None
    assert teacher(x.double()).dtype == torch.float64
    assert teacher(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_submit_is_a_future_of_the_same_answer(teacher):
    x = images(seed=1)
    coming = teacher.submit(x)
    assert isinstance(coming, Future)
    waited = teacher.counters.wait_seconds
    assert torch.equal(coming.result(timeout=30), teacher(x))
    assert teacher.counters.wait_seconds >= waited


def test_several_outputs_come_as_a_dict(grpc_teacher, random_teacher):
    feature = random_teacher.feature_names[-1]
    with TeacherModule(grpc_teacher[0], ("logits", feature), wire_dtype="float32") as module:
        got = module(images(2))
    assert set(got) == {"logits", feature}
    assert got["logits"].shape == (2, 10) and got[feature].shape[0] == 2


def test_a_module_with_nothing_to_train_move_or_save(teacher):
    x = images(2)
    assert list(teacher.parameters()) == [] and list(teacher.buffers()) == [] and teacher.state_dict() == {}
    expected = teacher(x)
    assert teacher.train() is teacher and torch.equal(teacher(x), expected)
    teacher.eval().to("cpu").half().float()
    assert not teacher.training and torch.equal(teacher(x), expected)


def test_pretrained_cfg_as_timm_reads_it(teacher):
    from timm.data import resolve_data_config

    cfg = teacher.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == teacher.num_classes == 10
    assert (cfg["mean"], cfg["std"]) == IMAGENET and teacher.normalisation_source == "imagenet default"
    assert teacher.default_cfg is cfg and teacher.in_chans == 3
    data = resolve_data_config(model=teacher)
    assert data["input_size"] == (3, 32, 32) and data["mean"] == IMAGENET[0] and data["crop_pct"] == cfg["crop_pct"]


def info(shape=(3, 32, 32), dataset=None, data=None) -> TeacherInfo:
    return TeacherInfo("t", "resnet8", shape, 10, [], 1.0, 64, dataset=dataset, data=data)


def test_normalisation_the_teacher_says_else_given_else_a_default():
    assert resolve_normalisation(info((1, 28, 28), dataset="fashion-mnist")) == (((0.286,), (0.353,)), "teacher")
    settings = json.dumps({"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]})
    said = info(data=ServedDataSet("folder:/x", 10, "f", view_settings=settings))
    assert resolve_normalisation(said) == (((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)), "teacher")
    assert resolve_normalisation(info(), (0.5,), 0.25) == (((0.5,) * 3, (0.25,) * 3), "arguments")
    assert resolve_normalisation(info()) == (IMAGENET, "imagenet default")
    assert resolve_normalisation(info((1, 28, 28))) == (((0.5,), (0.5,)), "0.5 default")
    with pytest.raises(ValueError, match=r"the teacher says .*mean \(0\.286,\).*leave mean and std out"):
        resolve_normalisation(info((1, 28, 28), dataset="fashion-mnist"), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="give both mean and std"):
        resolve_normalisation(info(), mean=(0.5,))
    with pytest.raises(ValueError, match="mean has 2 values; the teacher takes 3-channel images"):
        resolve_normalisation(info(), (0.1, 0.2), (0.3, 0.4))


@pytest.mark.parametrize("bad, error, message", [
    (torch.zeros(3, 32, 32), ValueError,
     r"teacher expects \[N, 3, 32, 32\]; got a 3-D tensor \[3, 32, 32\] \(add the batch dimension"),
    (torch.zeros(2, 1, 28, 28), ValueError, r"teacher expects \[N, 3, 32, 32\]; got \[2, 1, 28, 28\]$"),
    (torch.zeros(0, 3, 32, 32), ValueError, "got an empty batch"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, r"floating-point images .*got torch.uint8: convert"),
    ([[0.0]], TypeError, "takes a tensor of images, got list"),
])
def test_bad_images_get_one_clear_message(teacher, bad, error, message):
    sent = teacher.counters.requests
    for ask in (teacher, teacher.submit):
        with pytest.raises(error, match=message) as caught:
            ask(bad)
        assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert teacher.counters.requests == sent  # refused here, never sent


def test_a_teacher_that_cannot_be_reached_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TeacherUnavailable, match=rf"^cannot reach the teacher at grpc://127.0.0.1:{port}: no "
                                                 r"teacher answered .* \(is `python -m teacher_server` running"):
        TeacherModule(f"grpc://127.0.0.1:{port}", connect_timeout=0.3)
    with pytest.raises(ValueError, match="has no known scheme"):
        TeacherModule("http://127.0.0.1:1")


def test_unknown_output_and_recipes_are_refused_at_the_start(grpc_teacher):
    with pytest.raises(ValueError, match="has no output 'nope'; it offers logits"):
        TeacherModule(grpc_teacher[0], ("logits", "nope"))
    with pytest.raises(ValueError, match="sends pixels: send='recipes'"):
        TeacherModule(grpc_teacher[0], send="recipes")


def test_use_after_close_says_to_make_a_new_one(grpc_teacher):
    module = TeacherModule(grpc_teacher[0])
    module(images(1))
    module.close()
    module.close()
    assert module.closed and module.counters.images == 1  # still readable, to set beside the server's
    for use in (lambda: module(images(1)), lambda: module.submit(images(1)), module.server_stats,
                module.__enter__):
        with pytest.raises(RuntimeError, match=r"is closed; make a new TeacherModule$"):
            use()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_answers_on_the_inputs_device(teacher):
    x = images().cuda().half()
    logits = teacher(x)
    assert logits.device == x.device and logits.dtype == torch.float16


def test_timm_logit_distillation_task_with_a_served_teacher(grpc_teacher):
    timm = pytest.importorskip("timm")
    from timm.task import LogitDistillationTask

    url, servicer = grpc_teacher
    torch.manual_seed(0)
    student = timm.create_model("test_resnet", num_classes=10)
    batch = 8
    x, y = images(batch, seed=2), torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    with TeacherModule(url) as teacher:
        task = LogitDistillationTask(student, teacher_model=teacher, temperature=4.0, verbose=False).to("cpu")
        assert task.teacher.model is teacher and not teacher.training
        assert {id(p) for p in task.parameters()} == {id(p) for p in student.parameters()}
        before = servicer.counters.snapshot()["images"]
        losses = [result["loss"].item() for result in train_task(task, x, y)]
        served = servicer.counters.snapshot()["images"] - before
        assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0], losses
        assert not teacher.training
        assert served == 3 * batch == teacher.counters.images
        assert teacher.server_stats().images == 3 * batch
