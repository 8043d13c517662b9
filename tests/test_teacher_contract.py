"""One contract for every kind of teacher client: flags a kind does not use are refused in one line,
final errors are one line and not retried, server counts that cannot be read never stop a run, and
the trainer learns what a client does by asking it."""
import logging
import time

import pytest
import torch

from student_trainer.cli import build_parser, teacher_config
from student_trainer.cli import main as train
from student_trainer.teachers import CLIENTS, FLAGS, TeacherRefused, connect, teacher_options
from student_trainer.teachers.remote import RetryPolicy
from teacher_server.server import build_server
from tests.conftest import SHIPPED_TEACHER, train_args

URLS = {"grpc": "grpc://127.0.0.1:1", "grpcs": "grpcs://127.0.0.1:1", "triton": "triton://127.0.0.1:1/teacher",
        "local": "local:/nonexistent/teacher.pt"}
VALUES = {"max_wait": 30.0, "tls_ca": "/nonexistent/ca.pem", "token_file": "/nonexistent/token",
          "client_id": "me", "send": "recipes"}


@pytest.mark.parametrize("scheme,option", [(s, o) for s in sorted(URLS) for o in sorted(FLAGS)
                                           if o not in CLIENTS[s].uses])
def test_a_flag_the_kind_does_not_use_is_refused_before_connecting(scheme, option):
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        connect(URLS[scheme], **{option: VALUES[option]})
    kind = "local:" if scheme == "local" else f"{scheme}://"
    assert str(err.value) == f"{FLAGS[option]} does not apply to {kind} teachers"
    assert time.monotonic() - start < 1  # nothing was dialled


def test_which_kind_uses_which_flag():
    assert CLIENTS["grpc"].uses == {"max_wait", "token_file", "client_id", "send"}
    assert CLIENTS["grpcs"].uses == CLIENTS["grpc"].uses | {"tls_ca"}
    assert CLIENTS["triton"].uses == {"max_wait", "token_file"}
    assert CLIENTS["local"].uses == set()


def test_only_the_flags_the_user_gave_are_passed():
    def parse(argv):
        return teacher_config(build_parser().parse_args(argv))

    assert teacher_options(parse([])) == {}
    assert teacher_options(parse(["--teacher-max-wait", "600"])) == {}  # the default: not an ask
    assert teacher_options(parse(["--teacher-max-wait", "5", "--client-id", "me", "--tls-ca", "ca.pem",
                                  "--token-file", "t", "--send", "recipes"])) == {
        "max_wait": 5.0, "client_id": "me", "tls_ca": "ca.pem", "token_file": "t", "send": "recipes"}
    assert teacher_options(parse(["--send", "pixels"])) == {}


def test_the_trainer_says_in_one_line_that_a_flag_does_not_apply(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train(train_args(tmp_path, "--method", "kd", "--train-size", "16", "--teacher-url",
                         "triton://127.0.0.1:1/teacher", "--client-id", "me"))
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "student_trainer: error: --client-id does not apply to triton:// teachers"]


def test_a_final_error_is_one_line_at_once_and_not_retried(grpc_teacher):
    url, _ = grpc_teacher
    with connect(url, wire_dtype="float32") as client:
        start = time.monotonic()
        with pytest.raises(TeacherRefused) as err:
            client.infer(torch.full((2, 3, 32, 32), float("nan")))
        assert time.monotonic() - start < 5 and client.retries == 0
        assert client.counters.requests == 0
    assert err.value.code().name == "INVALID_ARGUMENT" and "NaN" in err.value.details()
    assert "\n" not in str(err.value) and str(err.value).startswith(f"teacher at {url} refused Infer: INVALID_ARGUMENT")


def test_server_counts_that_cannot_be_read_are_null_with_the_reason_and_warned_once(random_teacher, caplog):
    server, _, port = build_server(random_teacher, host="127.0.0.1", port=0, max_batch=64)
    with connect(f"grpc://127.0.0.1:{port}") as client:
        assert client.try_server_stats().available
        server.stop(grace=None).wait()
        client.retry = RetryPolicy(max_wait=0.5)
        with caplog.at_level(logging.WARNING, logger="student_trainer.teacher"):
            first, second = client.try_server_stats(), client.try_server_stats()
    for stats in (first, second):
        assert not stats.available and stats.images is None and stats.requests is None
        assert stats.source.startswith(f"unavailable: teacher at grpc://127.0.0.1:{port} gave no answer to Stats")
    assert len([r for r in caplog.records if "cannot read the counts" in r.getMessage()]) == 1


def test_every_kind_says_the_data_set_the_teacher_was_trained_on_or_none(shipped_grpc_teacher, grpc_teacher,
                                                                         tmp_path):
    from common.checkpoint import make_checkpoint, save_checkpoint
    from common.models import build_model

    unsaid = save_checkpoint(make_checkpoint(build_model("resnet8", 10), arch="resnet8", num_classes=10,
                                             input_shape=(3, 32, 32)), tmp_path / "no-meta.pt")
    for url, dataset in ((shipped_grpc_teacher, "fashion-mnist"), (f"local:{SHIPPED_TEACHER}", "fashion-mnist"),
                         (grpc_teacher[0], None), (f"local:{unsaid}", None)):
        with connect(url) as client:
            assert client.describe().dataset == dataset, url


def test_a_client_says_whether_it_sends_recipes_and_whether_it_asks_a_live_teacher(grpc_teacher):
    from student_trainer.teachers.stored import StoredTeacher

    url, _ = grpc_teacher
    with connect(url) as pixels, connect(url, send="recipes") as recipes, \
            connect(f"local:{SHIPPED_TEACHER}") as local:
        assert (pixels.takes_recipes, recipes.takes_recipes, local.takes_recipes) == (False, True, False)
        assert pixels.asks_live_teacher and recipes.asks_live_teacher and local.asks_live_teacher
        stored = StoredTeacher(local.describe(), "a store")
    assert not stored.takes_recipes and not stored.asks_live_teacher
    with pytest.raises(RuntimeError, match="no teacher to ask about 2 views missing from the answers stored in a store"):
        stored.infer(torch.zeros(2, 1, 28, 28))
