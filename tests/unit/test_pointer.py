"""The rollout's pointer is keyed on the instance's own MODEL_URI, whichever shell the rollout runs in."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from loopback.process import wait_until
from service.lifecycle import pointer, rollout


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
