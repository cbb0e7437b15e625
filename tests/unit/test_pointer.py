"""The rollout's pointer is keyed on the instance's own MODEL_URI, whichever shell the rollout runs in;
a rollout refused before the workers are touched signals nothing and keeps the pointer."""

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import types

import pytest

from loopback.process import free_port, wait_until
from service.cli import rollout as rollout_cli
from service.lifecycle import pointer, rollout
from service.lifecycle.registry import ModelURI


@pytest.fixture
def child():
    """A process of this test's own (a 'worker' whose parent, this process, plays the master)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def mark(cache, pid, **state):
    """A worker marker as note_worker writes it."""
    folder = cache / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    body = {"pid": pid, "start": pointer.process_start(pid), **state}
    (folder / f"{pid}.json").write_text(json.dumps(body))


def test_the_instance_uri_is_what_its_workers_recorded_not_the_command_s_own(child, tmp_path):
    mark(tmp_path, child.pid, ready=True, model_version="a", configured_uri="models:/calories/1")
    assert rollout.instance_model_uri(os.getpid(), tmp_path, "") == "models:/calories/1"
    assert rollout.instance_model_uri(os.getpid(), tmp_path, "models:/calories/9") == "models:/calories/1"


def test_an_instance_configured_without_a_uri_keys_the_pointer_on_none(child, tmp_path):
    mark(tmp_path, child.pid, ready=True, model_version="a", configured_uri="")
    assert rollout.instance_model_uri(os.getpid(), tmp_path, "models:/calories/9") == ""


def test_without_markers_the_master_s_environment_says(tmp_path):
    master = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={**os.environ, "MODEL_URI": "models:/calories/3"})
    try:
        # Until it has exec'd, /proc shows the environment it was forked with (this test's own).
        wait_until(lambda: b"time.sleep" in pathlib.Path(f"/proc/{master.pid}/cmdline").read_bytes(), "exec")
        assert rollout.instance_model_uri(master.pid, tmp_path, "") == "models:/calories/3"
    finally:
        master.kill()
        master.wait()


def test_before_a_start_the_command_s_own_uri_keys_it(tmp_path):
    own = "models:/calories@champion"
    assert rollout.instance_model_uri(None, tmp_path, own) == own
    assert rollout.instance_model_uri(None, tmp_path, None) == ""


def test_a_worker_records_the_uri_its_instance_is_configured_with(tmp_path):
    class Loaded:
        ready, trained_version, uri = True, "a", None

    pointer.note_worker({"MODEL_CACHE_DIR": tmp_path, "MODEL_URI": "models:/calories/2"}, Loaded())
    state = pointer.worker_state(tmp_path, os.getpid())
    assert state["configured_uri"] == "models:/calories/2" and state["model_version"] == "a"


def test_the_pointer_applies_only_to_the_uri_it_was_written_for(tmp_path):
    from service.lifecycle.registry import ModelURI

    pointer.write_pointer(tmp_path, "models:/calories/1", ModelURI("calories", "2"))
    cfg = {"MODEL_CACHE_DIR": tmp_path, "MODEL_URI": "models:/calories/1"}
    assert str(pointer.serving_uri(cfg)) == "models:/calories/2"
    assert str(pointer.serving_uri({**cfg, "MODEL_URI": "models:/calories/5"})) == "models:/calories/5"


# A stand-in gunicorn master with one worker: it writes down every signal it gets, one name a line.
MASTER = """
import signal, subprocess, sys, time
def note(signum, frame):
    with open(sys.argv[1], "a") as out:
        out.write(signal.Signals(signum).name + "\\n")
for s in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH):
    signal.signal(s, note)
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("ready", worker.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture
def master(tmp_path):
    """The stand-in master, its worker's pid, its pid file and the file of the signals it got."""
    noted = tmp_path / "signals"
    proc = subprocess.Popen([sys.executable, "-c", MASTER, str(noted)], stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline().split()[1])
    pidfile = tmp_path / "gunicorn.pid"
    pidfile.write_text(f"{proc.pid}\n")
    yield types.SimpleNamespace(pid=proc.pid, worker=worker, pidfile=pidfile, noted=noted)
    for pid in (worker, proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def signals_got(master):
    """The signals the master got, once any sent before now has been handled: WINCH goes last, as
    Python runs pending handlers in signal-number order and WINCH's is above HUP, TTIN and TTOU."""
    os.kill(master.pid, signal.SIGWINCH)
    wait_until(lambda: master.noted.exists() and "SIGWINCH" in master.noted.read_text(), "the master's WINCH",
               interval=0.05)
    return [name for name in master.noted.read_text().split() if name != "SIGWINCH"]


@pytest.mark.parametrize("refusal", ["registry unreachable", "does not load", "slower than compiled"])
def test_a_rollout_refused_before_the_workers_are_touched_signals_nothing(master, tmp_path, monkeypatch,
                                                                           refusal):
    cache = tmp_path / "models"
    pointer.write_pointer(cache, "", ModelURI("calories", "1"))
    before = (cache / pointer.POINTER).read_bytes()
    cfg = {"MODEL_CACHE_DIR": cache, "MODEL_URI": None, "CHALLENGER_URIS": (), "MODEL_COMPILED": True,
           "MODEL_PATH": tmp_path / "model.joblib", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    uri = "models:/calories@champion"  # resolved by the registry, which nothing answers here
    if refusal != "registry unreachable":
        uri = "models:/calories/2"
        monkeypatch.setattr(rollout.registry, "fetch", lambda uri, cfg: cache / uri.name / uri.number)
        outcome = ({"ready": False, "error": "sha256 mismatch"} if refusal == "does not load"
                   else {"ready": True, "model_version": "b", "inference": "booster"})
        monkeypatch.setattr(rollout, "checked_in_child", lambda uri: outcome)
    args = rollout_cli.parse_args(["--uri", uri, "--pidfile", str(master.pidfile)])
    with pytest.raises(rollout_cli.REFUSALS):
        rollout.rollout(args, cfg)
    assert signals_got(master) == []
    assert (cache / pointer.POINTER).read_bytes() == before
    assert rollout.workers_of(master.pid) == {master.worker}
