"""Shared fixtures: a real gRPC teacher server on a free localhost port."""
import os
from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(min(2, os.cpu_count() or 1))

# The teacher `make serve-teacher` serves: a resnet20 trained on Fashion-MNIST, as its checkpoint records.
SHIPPED_TEACHER = Path(__file__).resolve().parents[1] / "experiments/teachers/fashion-mnist-resnet20.pt"


@pytest.fixture(scope="module")
def random_teacher():
    """A small real model (random weights) standing in for a trained teacher."""
    from common.teacher_model import load_teacher

    return load_teacher(arch="resnet8", num_classes=10, input_shape=(3, 32, 32), seed=0)


@pytest.fixture(scope="module")
def grpc_teacher(random_teacher):
    """The real server, started in this process on 127.0.0.1 with a free port."""
    from teacher_server.server import build_server

    server, servicer, port = build_server(random_teacher, host="127.0.0.1", port=0, max_batch=64)
    yield f"grpc://127.0.0.1:{port}", servicer
    server.stop(grace=None).wait()


@pytest.fixture(scope="module")
def shipped_grpc_teacher():
    """The shipped teacher behind the real server, in this process: its URL."""
    from common.teacher_model import load_teacher
    from teacher_server.server import build_server

    server, _, port = build_server(load_teacher(str(SHIPPED_TEACHER)), host="127.0.0.1", port=0, max_batch=64)
    yield f"grpc://127.0.0.1:{port}"
    server.stop(grace=None).wait()


def fashion_mnist_or_skip() -> None:
    """Skip the test where ``common.data`` cannot find Fashion-MNIST (``make data`` fetches it)."""
    from common.data import DatasetNotFoundError, build_dataset

    try:
        build_dataset("fashion-mnist", augment=False)
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not here: {e}")


def train_args(tmp_path, *extra):
    """Flags for a short trainer run on the built-in synthetic data."""
    return ["--dataset", "synthetic", "--arch", "resnet8", "--epochs", "1", "--workers", "0",
            "--no-progress", "--out", str(tmp_path), "--test-size", "64", *map(str, extra)]


def train_task(task: nn.Module, images, labels, steps: int = 3, lr: float = 1e-3) -> list[dict]:
    """``steps`` Adam steps of a timm-style task (a module returning a dict with ``loss``): each step's dict."""
    optimizer = torch.optim.Adam(task.parameters(), lr=lr)
    task.train()
    results = []
    for _ in range(steps):
        result = task(images, labels)
        optimizer.zero_grad()
        result["loss"].backward()
        optimizer.step()
        results.append(result)
    return results


class FailsOnLargeValues(nn.Module):
    """A real model with a bug that only some inputs reach (as an overflow or a shape bug would)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        if x.abs().max() > 100:
            raise RuntimeError("numerical blow-up in fc")
        return self.fc(x.flatten(1))
