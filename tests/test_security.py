"""Access control: the shared token (refused without it or with a wrong one) and TLS with a test CA."""
import datetime
import ipaddress
import json
import logging

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from student_trainer.cli import main as train
from student_trainer.teachers import TeacherUnavailable, connect
from teacher_server.auth import server_credentials
from teacher_server.server import build_server
from tests.conftest import train_args

TOKEN = "s3cret-token-0123456789abcdef"


def _write_test_pki(folder):
    """A throw-away CA and a server certificate it signed, for localhost and 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, public_key, signing_key, *, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = (builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unix-kd test CA")])
    ca_cert = cert(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    server_cert = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), ca_name,
                       server_key.public_key(), ca_key, ca=False)
    paths = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secrets")
    paths = _write_test_pki(folder)
    (folder / "token").write_text(TOKEN + "\n")
    (folder / "wrong-token").write_text("not-the-token\n")
    return folder, paths


@pytest.fixture(scope="module")
def token_server(random_teacher):
    server, _, port = build_server(random_teacher, port=0, max_batch=64, token=TOKEN)
    yield port
    server.stop(grace=None).wait()


@pytest.fixture(scope="module")
def tls_server(random_teacher, secrets_dir):
    _, pki = secrets_dir
    server, _, port = build_server(random_teacher, port=0, max_batch=64, token=TOKEN,
                                   tls=server_credentials(pki["cert"], pki["key"]))
    yield port
    server.stop(grace=None).wait()


def test_calls_without_the_token_or_with_a_wrong_one_are_refused(token_server, secrets_dir):
    folder, _ = secrets_dir
    for token_file in (None, folder / "wrong-token"):
        with connect(f"grpc://127.0.0.1:{token_server}", token_file=token_file) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.describe()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert client.retries == 0  # a refusal is final, not retried
            assert TOKEN not in err.value.details()


def test_with_the_token_it_works_and_the_token_is_never_logged(token_server, secrets_dir, random_teacher, caplog):
    folder, _ = secrets_dir
    x = torch.randn(3, 3, 32, 32)
    with caplog.at_level(logging.DEBUG), connect(f"grpc://127.0.0.1:{token_server}", token_file=folder / "token",
                                                 wire_dtype="float32") as client:
        got = client.infer(x)["logits"]
    assert torch.allclose(got, random_teacher.forward(x, ["logits"])[0]["logits"], atol=1e-5)
    assert TOKEN not in caplog.text


def test_health_stays_open_without_the_token(token_server):
    with grpc.insecure_channel(f"127.0.0.1:{token_server}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_over_tls_with_the_test_ca_it_works(tls_server, secrets_dir, random_teacher):
    folder, pki = secrets_dir
    x = torch.randn(2, 3, 32, 32)
    for host in ("localhost", "127.0.0.1"):
        with connect(f"grpcs://{host}:{tls_server}", tls_ca=pki["ca"], token_file=folder / "token",
                     wire_dtype="float32") as client:
            got = client.infer(x)["logits"]
        assert torch.allclose(got, random_teacher.forward(x, ["logits"])[0]["logits"], atol=1e-5)


@pytest.mark.parametrize("scheme", ["grpcs", "grpc"])
def test_tls_server_refuses_clients_that_cannot_check_it_or_speak_plaintext(tls_server, secrets_dir, scheme):
    folder, _ = secrets_dir  # grpcs without --tls-ca trusts only the system roots, not the test CA
    with pytest.raises(TeacherUnavailable, match="no teacher answered"):
        connect(f"{scheme}://localhost:{tls_server}", token_file=folder / "token", connect_timeout=1)


def test_trainer_over_tls_with_token_keeps_the_token_out_of_summary(tls_server, secrets_dir, tmp_path):
    folder, pki = secrets_dir
    s = train(train_args(tmp_path, "--method", "kd", "--teacher-url", f"grpcs://localhost:{tls_server}",
                         "--tls-ca", pki["ca"], "--token-file", folder / "token", "--batch-size", "16",
                         "--train-size", "32"))
    assert s["teacher_images"] == 32 and s["teacher_url"] == f"grpcs://localhost:{tls_server}"
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".txt", ".log", ""):
            assert TOKEN not in path.read_text(errors="replace"), path
    assert TOKEN not in json.dumps(s)


def test_a_token_in_the_url_is_refused_without_echoing_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train(train_args(tmp_path, "--method", "kd", "--teacher-url", f"grpc://{TOKEN}@127.0.0.1:1"))
    out, err = capsys.readouterr()
    assert e.value.code == 2 and "Traceback" not in err
    assert "--token-file" in err.strip().splitlines()[-1]
    assert TOKEN not in out + err
