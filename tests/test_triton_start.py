"""A Triton start lost to PyTriton's handshake race is made again once; any other failure is raised at once."""
from __future__ import annotations

import socket

import pytest

pytest.importorskip("pytriton")

from teacher_server import triton_backend  # noqa: E402
from teacher_server.triton_backend import TritonStartError, lost_handshake  # noqa: E402


def _refused_handshake(tmp_path) -> BaseException:
    """What PyTriton's own handshake raises when the proxy's socket exists but nobody listens on it yet."""
    from pytriton.proxy.communication import get_config_from_handshake_server

    path = tmp_path / "teacher-config.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(path))  # bound, not listening: the moment the race loses
    try:
        get_config_from_handshake_server(path, timeout_s=0.5)
    except BaseException as e:  # noqa: BLE001  (the test looks at what it is)
        return e
    finally:
        bound.close()
    pytest.fail("the handshake reached a socket nobody listens on")


def test_the_refused_handshake_is_the_race_and_other_refusals_are_not(tmp_path):
    error = _refused_handshake(tmp_path)
    assert isinstance(error, ConnectionRefusedError)
    assert lost_handshake(error)
    with pytest.raises(ConnectionRefusedError) as other:
        socket.create_connection(("127.0.0.1", triton_backend.free_port()), timeout=1)  # nobody on that port
    assert not lost_handshake(other.value)
    assert not lost_handshake(ValueError("the model failed to load"))


@pytest.mark.parametrize("race, calls", [(True, 2), (False, 1)])
def test_start_triton_tries_again_only_after_the_race(monkeypatch, race, calls):
    tries = []

    def start_once(teacher, opts):
        tries.append(opts)
        if len(tries) == 1:
            raise TritonStartError("Triton did not start", lost_handshake=race)
        return "running"

    monkeypatch.setattr(triton_backend, "_start_triton_once", start_once)
    if race:
        assert triton_backend.start_triton(None, "opts") == "running"
    else:
        with pytest.raises(TritonStartError):
            triton_backend.start_triton(None, "opts")
    assert len(tries) == calls


def test_a_race_lost_twice_is_raised(monkeypatch):
    def start_once(teacher, opts):
        raise TritonStartError("Triton did not start", lost_handshake=True)

    monkeypatch.setattr(triton_backend, "_start_triton_once", start_once)
    with pytest.raises(TritonStartError, match="did not start"):
        triton_backend.start_triton(None, "opts")
