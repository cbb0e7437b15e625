"""The docs test (issue 24): every command block of README.md and docs/*.md that claims to work here
runs as a reader types it; every other block says why not and which test covers it instead.

**Markers.** The line right before a fence classifies the block (an HTML comment: GitHub shows
nothing). A fence whose info string names a data language (json, yaml, promql, …) needs none; every
other fence (none, `text`, `sh`, `console`) needs one, so no new block slips in untested:

    <!-- docs-test: run -->              typed in the reader's shell, one command after the other
    <!-- docs-test: run terminal=2 -->   the same, in a second terminal, while a service is up
    <!-- docs-test: run ready=URL -->    a service: stays up in its own terminal (process group);
                                         the page goes on once every `ready=` URL answers 2xx; it
                                         gets Ctrl-C (SIGINT) when a later service takes its port,
                                         or at the end of the page, and must stop on it
        options: expect=REGEX (repeatable: the block's output must show what the prose promises),
                 timeout=SECONDS (per command, default 300)
        clauses: `; not run here: COMMAND — covered by COVER[, COVER]` leaves out the lines
                 starting with COMMAND and lists them
    <!-- docs-test: not run here — covered by COVER[, COVER] -->
    <!-- docs-test: output -->           output the docs show, not a command
    <!-- docs-test: synopsis — covered by COVER -->   a usage synopsis with placeholders

A COVER is `tests/x.py::test_name` or a path of the repository, optionally followed by a note in
parentheses; each must exist.

**How a block runs.** In a copy of the tracked files with no model and no var/, as in a fresh
clone, with a `.venv` of its own (layered over the checkout's installed packages, the copy as its
editable install: `.venv/bin/calories` runs the copy's code, so nothing touches the checkout's
var/ or logs/); each page of the docs is one reader, starting from `env -i` with only
HOME (a fresh folder), PATH=/usr/local/bin:/usr/bin:/bin and LANG, plus what the docs tell the
reader to set: what the page's blocks `export`, and the documented settings below. Each command
runs as printed with `bash -e -c`, except that the ports the docs use are swapped for free ones:
through the documented settings `PORT` (what serve, observe and scaleout start, and where
simulate-stream looks) and `PROMETHEUS_PORT` (observe), and, in the command text, only a loopback
URL's port and the MLflow server's `--port` (no setting exists for it). Short flags where the docs
offer them: `SIMFLAGS` and `SCALEOUTFLAGS`.
A block identical to one already run (same commands, same marker) is listed, not run again.
"""

import dataclasses
import os
import pathlib
import re
import resource
import shlex
import shutil
import signal
import subprocess
import time

import pytest
import requests
from support import PUBLIC_CSV, ROOT

from loopback.process import free_port

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- docs-test: (.*) -->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")
# Data and code shown for reading: never a command.
DATA_INFO = {"json", "yaml", "yml", "promql", "python", "ini", "toml", "dockerfile", "nginx", "csv", "sql"}
COMMAND_INFO = {"", "text", "sh", "bash", "shell", "console"}
KINDS = ("run", "not run here", "output", "synopsis")
PATH = "/usr/local/bin:/usr/bin:/bin"
# The whole docs test's wall time, enforced on every run: CI runs it beside the unit and deploy
# tiers on 2 CPUs, where it took 158 s (78 s at load 6 on its own): 240 s holds under that
# contention, so it needs no exemption for a loaded machine.
BUDGET_SECONDS = 240
# Where the run writes what it ran (each command, its outcome and seconds) and what it did not.
REPORT = ROOT / "reports" / "docs-test.txt"
# The documented setting for each port the docs print (README, Configuration; the Makefile).
DOC_PORTS = (8000, 5000, 9090)


def settings(ports):
    """What the reader sets to move every documented port (docs/operations.md, Addresses: one PORT for
    serve, observe, scaleout and simulate-stream), and the short flags the docs offer."""
    return {"PORT": str(ports[8000]), "PROMETHEUS_PORT": str(ports[9090]),
            "SCALEOUTFLAGS": "--workers 1", "SIMFLAGS": "--cycles 1 --feedback-delay 2"}


def swap_ports(text, ports):
    """The command with the documented ports replaced: a loopback URL's port and `--port N`."""
    for doc, port in ports.items():
        text = re.sub(rf"\b(127\.0\.0\.1|localhost):{doc}\b", rf"\g<1>:{port}", text)
        text = re.sub(rf"(--port[ =]){doc}\b", rf"\g<1>{port}", text)
    return text


@dataclasses.dataclass
class Cover:
    path: str
    test: str | None
    note: str

    def problem(self):
        """Why this cover names nothing, or None."""
        file = ROOT / self.path
        if not file.exists():
            return f"{self.path} does not exist"
        if self.test and not re.search(rf"^(async )?def {re.escape(self.test)}\(", file.read_text(), re.M):
            return f"{self.path} has no {self.test}"
        return None

    def __str__(self):
        return f"{self.path}::{self.test}" if self.test else self.path


def parse_covers(text):
    covers = []
    for item in filter(None, (c.strip() for c in re.split(r",(?![^(]*\))", text))):
        m = re.fullmatch(r"([\w./-]+?)(?:::(\w+))?(?:\s+\((.*)\))?", item)
        if not m:
            raise ValueError(f"not a cover (path[::test] [(note)]): {item!r}")
        covers.append(Cover(m.group(1), m.group(2), m.group(3) or ""))
    if not covers:
        raise ValueError("no cover named")
    return covers


@dataclasses.dataclass
class Marker:
    kind: str
    terminal: int = 1
    ready: list = dataclasses.field(default_factory=list)
    expect: list = dataclasses.field(default_factory=list)
    timeout: float = 300.0
    covers: list = dataclasses.field(default_factory=list)
    not_run: list = dataclasses.field(default_factory=list)  # [(command prefix, [Cover])]


def parse_marker(text):
    """A Marker from the text inside `<!-- docs-test: … -->`; ValueError when it is malformed."""
    head, *clauses = [c.strip() for c in text.split(";")]
    kind = next((k for k in KINDS if head == k or head.startswith(k + " ")), None)
    if kind is None:
        raise ValueError(f"unknown kind {head!r}: one of {KINDS}")
    rest = head[len(kind):].strip()
    marker = Marker(kind)
    if kind == "run":
        for option in shlex.split(rest):
            key, _, value = option.partition("=")
            if key == "terminal":
                marker.terminal = int(value)
            elif key == "ready":
                marker.ready.append(value)
            elif key == "expect":
                re.compile(value)
                marker.expect.append(value)
            elif key == "timeout":
                marker.timeout = float(value)
            else:
                raise ValueError(f"unknown option {option!r}")
        for clause in clauses:
            m = re.fullmatch(r"not run here: (.+?) — covered by (.+)", clause)
            if not m:
                raise ValueError(f"not a clause `not run here: COMMAND — covered by COVER`: {clause!r}")
            marker.not_run.append((m.group(1), parse_covers(m.group(2))))
    elif kind in ("not run here", "synopsis"):
        m = re.fullmatch(r"(?:— covered by (.+))?", rest)
        if not m or clauses or (kind == "not run here" and not m.group(1)):
            raise ValueError(f"expected `{kind} — covered by COVER[, COVER]`: {text!r}")
        marker.covers = parse_covers(m.group(1)) if m.group(1) else []
    elif rest or clauses:
        raise ValueError(f"`{kind}` takes no options: {text!r}")
    return marker


def commands(text):
    """The logical command lines of a block: continuations joined, blank and comment lines dropped."""
    out, current = [], ""
    for line in text.splitlines():
        current += line
        if current.endswith("\\"):
            current += "\n"  # kept as printed: bash joins the lines
            continue
        if current.strip() and not current.lstrip().startswith("#"):
            out.append(current.strip())
        current = ""
    if current.strip():
        out.append(current.strip())
    return out


def bare(command):
    """A command without its trailing comment, whitespace squeezed: what a not-run clause names."""
    return " ".join(re.sub(r"\s+#.*$", "", command).split())


@dataclasses.dataclass
class Block:
    page: pathlib.Path
    line: int
    info: str
    text: str
    marker: Marker | None
    error: str | None  # a missing or malformed marker

    @property
    def where(self):
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def runs(self):
        """The commands the test runs, and the [(command, covers)] it leaves out."""
        run, left = [], []
        for command in commands(self.text):
            cover = next((c for prefix, c in self.marker.not_run if bare(command).startswith(prefix)), None)
            (left.append((command, cover)) if cover else run.append(command))
        return run, left


def blocks(page):
    """Every fenced block of a page with the marker on the line right before its fence."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        info, text = m.group(1).lower(), "\n".join(lines[i + 1:end]) + "\n"
        marker, error = None, None
        before = MARKER.match(lines[i - 1]) if i else None
        if before:
            try:
                marker = parse_marker(before.group(1).strip())
            except ValueError as exc:
                error = f"malformed marker: {exc}"
        elif info not in DATA_INFO:
            error = "no `<!-- docs-test: … -->` marker on the line before the fence"
        if info not in DATA_INFO | COMMAND_INFO and not marker:
            error = f"unknown info string {info!r}: a data language, or a marker"
        found.append(Block(page, i + 1, info, text, marker, error))
        i = end + 1
    return found


def all_blocks():
    return [b for page in PAGES for b in blocks(page)]


def not_run_list(found):
    """[(where, command, covers)] of every command the docs test does not run."""
    listed = []
    for b in found:
        if b.marker and b.marker.kind == "not run here":
            listed += [(b.where, c, b.marker.covers) for c in commands(b.text)]
        elif b.marker and b.marker.kind == "run":
            listed += [(b.where, c, covers) for c, covers in b.runs()[1]]
    return listed


CLEAN_TEST = "test_clean_keeps_stores_and_registries_and_clean_state_says_what_it_deletes"
# Make targets the docs name that no run block runs: what covers each instead.
TARGETS_ELSEWHERE = {
    "test": ".ci/run (CI runs it: the suite itself, this test included)",
    "test-fast": "tests/tiers.py (the unit tier, which make test runs)",
    "install": "tests/system/test_make.py (every make target the docs run depends on it)",
    "soak": "tests/load/test_faults.py::test_soak (25 s in every run; make soak is the 10-minute run)",
    "mutation": ("tests/unit/test_mutation_config.py::test_the_test_selection_collects_every_id_it_names "
                 "(its configuration; the run itself is not in CI, the docs say so)"),
    "bench": "tests/load/test_bench.py::test_bench_runs_and_reports_every_figure",
    "stress": "tests/load/test_stress.py::test_make_stress_against_one_instance",
    "image": "tests/deploy/test_container.py::test_serves_from_the_host_with_a_read_only_root",
    "image-size": "tests/deploy/test_container.py::test_make_image_size_reports_the_budget",
    "data": "tests/system/test_make.py::test_make_data_reproduces_the_sample",
    "lint": "tests/system/test_make.py::test_make_lint",
    "lock": ("tests/deploy/test_container.py::"
             "test_the_lock_pins_every_requirement_and_this_environment_uses_it"),
    "clean": f"tests/system/test_make.py::{CLEAN_TEST}",
    "clean-state": f"tests/system/test_make.py::{CLEAN_TEST}",
    "model": "tests/system/test_make.py::test_make_model_serves_the_model_path_of_the_environment",
}


def documentation():
    return "\n".join(page.read_text() for page in PAGES)


def targets_run(found):
    """The make targets that the run blocks run."""
    named = set()
    for b in found:
        if b.marker and b.marker.kind == "run":
            for command in b.runs()[0]:
                named |= set(re.findall(r"(?:^|&& |\s)make ([a-z][\w-]*)", command))
    return named


# ------------------------------------------------------------------------------------ fast tests


def test_every_block_is_classified():
    found = all_blocks()
    assert len(found) >= 30
    assert [f"{b.where}: {b.error}" for b in found if b.error] == []


def test_every_cover_names_an_existing_test_or_file():
    found = all_blocks()
    covers = [(where, cover) for where, _, covers in not_run_list(found) for cover in covers]
    covers += [(b.where, c) for b in found if b.marker for c in b.marker.covers]
    covers += [(f"TARGETS_ELSEWHERE[{t}]", c) for t, text in TARGETS_ELSEWHERE.items()
               for c in parse_covers(text)]
    assert covers
    assert [f"{where}: {c.problem()}" for where, c in covers if c.problem()] == []


def test_the_list_of_commands_not_run_names_what_the_issue_requires():
    listed = " | ".join(command for _, command, _ in not_run_list(all_blocks()))
    for command in ("make test", "make bench", "make stress", "python3 -m venv .mlflow"):
        assert command in listed
    assert {"test", "soak", "mutation", "bench", "stress"} <= TARGETS_ELSEWHERE.keys()


def test_every_make_target_the_docs_name_is_run_or_covered_elsewhere():
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", documentation()))
    assert named - targets_run(all_blocks()) - TARGETS_ELSEWHERE.keys() == set()


def test_the_parser_refuses_what_would_slip_through(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```\nmake new-thing\n```\n\n<!-- docs-test: run -->\n```\nmake serve\n```\n\n"
                    "```yaml\na: 1\n```\n\n<!-- docs-test: run bogus=1 -->\n```text\nx\n```\n\n"
                    "<!-- docs-test: not run here -->\n```\ny\n```\n\n```promptql\nz\n```\n\n"
                    "<!-- docs-test: run ready=http://127.0.0.1:8000/healthz; not run here: make test"
                    " — covered by tests/system/test_docs.py::test_nothing (a note) -->"
                    "\n```\nmake serve  # x\n"
                    "make test   # y\n```\n")
    found = blocks(page)
    assert [(b.line, bool(b.error)) for b in found] == [
        (3, True), (8, False), (12, False), (17, True), (22, True), (26, True), (31, False)]
    run, left = found[-1].runs()
    assert run == ["make serve  # x"] and left[0][0] == "make test   # y"
    assert [c.problem() for c in left[0][1]] == ["tests/system/test_docs.py has no test_nothing"]


def test_commands_join_continuations_and_ports_are_swapped():
    text = "curl -s http://127.0.0.1:8000/x \\\n  -d '{}'\n# a comment\n\nmlflow server --port 5000\n"
    assert commands(text) == ["curl -s http://127.0.0.1:8000/x \\\n  -d '{}'", "mlflow server --port 5000"]
    ports = {8000: 18000, 5000: 15000}
    assert swap_ports(commands(text)[1], ports) == "mlflow server --port 15000"
    assert swap_ports("http://127.0.0.1:80001 127.0.0.1:8000/", ports) == \
        "http://127.0.0.1:80001 127.0.0.1:18000/"


# ------------------------------------------------------------------------------------ the runner


def mlflow_venv():
    """The MLflow server's venv that stands in for `python3 -m venv .mlflow && …` (its build is not
    run here: `tox -e mlflow` builds the same from requirements-mlflow.txt; make test builds it
    beside the tests, so wait for it while it is being built), or None."""
    candidates = [os.environ.get("MLFLOW_SERVER_BIN"), ROOT / ".tox" / "mlflow" / "bin" / "mlflow"]
    deadline = time.monotonic() + (600 if (ROOT / ".tox" / "mlflow").exists() else 0)
    while True:
        for candidate in filter(None, candidates):
            venv = pathlib.Path(candidate).parent.parent
            if os.access(candidate, os.X_OK) and (venv / "ready").exists():
                return venv
        if time.monotonic() >= deadline:
            break
        time.sleep(2)
    return pathlib.Path(shutil.which("mlflow")).parent.parent if shutil.which("mlflow") else None


def precondition(command, tree):
    """Why a command cannot run on this machine (None: it can); a skip here, a failure in CI."""
    if "../shared/data/calories_public.csv" in command and not PUBLIC_CSV.exists():
        return f"the public dataset is missing ({PUBLIC_CSV}; CALORIES_PUBLIC_CSV names it)"
    if ".mlflow/bin/" in command and not (tree / ".mlflow").exists():
        if not mlflow_venv():
            return "no MLflow server venv to stand in for .mlflow (tox -e mlflow builds it; make test does)"
        (tree / ".mlflow").symlink_to(mlflow_venv())
    if "make observe" in command and not shutil.which("prometheus"):
        return "prometheus is missing (apt-get install prometheus; .ci/run installs it)"
    return None


def layered_venv(tree):
    """`.venv` of the copy: a venv of its own over the checkout's installed packages, with the copy
    itself as the editable install, as `make install` would make it in a fresh clone. (A symlink to
    the checkout's .venv would run the checkout's code, whose default paths, var/ and logs/, are
    its own: a command would then touch the developer's store.)"""
    shared, venv = (ROOT / ".venv").resolve(), tree / ".venv"
    subprocess.run([shared / "bin" / "python", "-m", "venv", "--without-pip", venv], check=True)
    lib = next((venv / "lib").glob("python3*/site-packages"))
    packages = next((shared / "lib").glob("python3*/site-packages"))
    # The checkout's packages and their .pth files, but not its own editable install.
    (lib / "_docs_test_packages.py").write_text(
        f"import os, site, sys\nsys.path.append({str(packages)!r})\n"
        f"for name in sorted(os.listdir({str(packages)!r})):\n"
        "    if name.endswith('.pth') and not name.startswith('__editable__'):\n"
        f"        site.addpackage({str(packages)!r}, name, set())\n")
    (lib / "00-docs-test-packages.pth").write_text("import _docs_test_packages\n")
    (lib / "zz-docs-test-editable.pth").write_text(f"{tree}\n")
    for script in sorted((shared / "bin").iterdir()):
        target = venv / "bin" / script.name
        if target.exists() or target.is_symlink():
            continue  # python, activate: the venv's own
        head = script.read_bytes()[:200]
        if head.startswith(b"#!") and b"python" in head.split(b"\n")[0]:
            body = script.read_text().split("\n", 1)[1]
            target.write_text(f"#!{venv / 'bin' / 'python'}\n{body}")
            target.chmod(0o755)
        else:
            target.symlink_to(script)
    (venv / ".installed-stamp").touch()  # installed: make never runs pip here
    return venv


def make_tree(tmp):
    """The tracked files in a fresh folder (no model, no var/), its own layered `.venv`, and
    `../shared/data` beside it as README's `make evaluate DATA=../shared/data/…` expects."""
    tree = tmp / "project"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    venv = layered_venv(tree)
    where = subprocess.run([venv / "bin" / "python", "-c", "import service; print(service.__file__)"],
                           cwd="/", capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tree)), f"the copy's .venv imports {where}, not the copy"
    if PUBLIC_CSV.exists():
        (tmp / "shared" / "data").mkdir(parents=True)
        (tmp / "shared" / "data" / "calories_public.csv").symlink_to(PUBLIC_CSV)
    return tree


def tail(text, n=1500):
    return text if len(text) <= n else "…" + text[-n:]


class Service:
    """A block that stays up, in its own terminal: its own process group, output to a file."""

    def __init__(self, block, script, env, cwd, log, ports):
        self.block, self.log, self.ports = block, log, ports
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=cwd, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def output(self):
        return self.log.read_text(errors="replace")

    def stop(self):
        """Ctrl-C, as the docs say; None when it stopped within 30 s, else what went wrong."""
        if self.proc.poll() is not None:
            return f"had already exited ({self.proc.returncode})"
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(30)
            return None
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            return "did not stop within 30 s of Ctrl-C (killed)"


class Reader:
    """One page's reader: a fresh environment, the terminals the page asks for, the results."""

    def __init__(self, tree, home, ports, logs, results):
        home.mkdir(parents=True, exist_ok=True)
        self.tree, self.ports, self.logs, self.results = tree, ports, logs, results
        self.env = {"HOME": str(home), "PATH": PATH, "LANG": "C.UTF-8", **settings(ports)}
        self.services = []
        self.skip_rest = None

    def record(self, block, command, outcome, seconds=0.0, detail=""):
        self.results.append((block.where, bare(command)[:90], outcome, seconds, detail))

    def run(self, block):
        marker = block.marker
        todo, _ = block.runs()
        if self.skip_rest:
            for command in todo:
                self.record(block, command, "skipped", detail=self.skip_rest)
            return
        for service in list(self.services):
            if service.proc.poll() is not None:
                self.services.remove(service)
                self.record(service.block, "(service)", "FAIL",
                            detail=f"exited ({service.proc.returncode}) before the page ended:\n"
                                   + tail(service.output()))
        exports = [c for c in todo if re.fullmatch(r"export \w+=\S+", c)]
        for command in exports:
            name, _, value = swap_ports(command, self.ports)[len("export "):].partition("=")
            self.env[name] = shlex.split(value)[0]
            self.record(block, command, "ok", detail="set in the reader's shell")
        todo = [c for c in todo if c not in exports]
        if marker.ready:
            self.serve(block, todo)
        else:
            self.foreground(block, todo)

    def serve(self, block, todo):
        marker = block.marker
        reason = next(filter(None, (precondition(c, self.tree) for c in todo)), None)
        if reason:
            self.skip_rest = f"{block.where} could not start: {reason}"
            for command in todo:
                self.record(block, command, "skipped", detail=reason)
            return
        urls = [swap_ports(u, self.ports) for u in marker.ready]
        ports = {int(m) for u in urls for m in re.findall(r":(\d+)/", u)}
        for old in [s for s in self.services if s.ports & ports]:  # the reader stops what holds the port
            self.stop(old)
        script = "\n".join(swap_ports(c, self.ports) for c in todo)
        log = self.logs / f"{block.page.stem}-{block.line}.log"
        started = time.monotonic()
        service = Service(block, script, dict(self.env), self.tree, log, ports)
        pending = list(urls)
        while pending and service.proc.poll() is None and time.monotonic() - started < marker.timeout:
            try:
                if requests.get(pending[0], timeout=3).status_code < 300:
                    pending.pop(0)
                    continue
            except requests.RequestException:
                pass
            time.sleep(0.5)
        seconds = time.monotonic() - started
        command = " && ".join(todo)
        if pending:
            why = (f"exited ({service.proc.returncode})" if service.proc.poll() is not None
                   else f"no answer in {marker.timeout:.0f} s")
            self.record(block, command, "FAIL", seconds, f"{pending[0]}: {why}\n" + tail(service.output()))
            self.stop(service, quiet=True)
            self.skip_rest = f"{block.where} did not come up"
            return
        self.services.append(service)
        missing = self.unmet(marker.expect, service.output, wait=15)
        if missing:
            self.record(block, command, "FAIL", seconds,
                        f"output lacks {missing}:\n" + tail(service.output()))
        else:
            self.record(block, command, "ok", seconds, f"up: {', '.join(urls)}")

    @staticmethod
    def unmet(expects, output, wait=0.0):
        deadline = time.monotonic() + wait
        while True:
            missing = [e for e in expects if not re.search(e, output(), re.M)]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.5)

    def foreground(self, block, todo):
        marker = block.marker
        if marker.terminal >= 2 and not self.services:
            for command in todo:
                self.record(block, command, "FAIL", detail="typed in a second terminal, but no service is up")
            return
        outputs = []
        for command in todo:
            reason = precondition(command, self.tree)
            if reason:
                self.record(block, command, "skipped", detail=reason)
                continue
            started = time.monotonic()
            proc = subprocess.Popen(["bash", "-e", "-c", swap_ports(command, self.ports)], cwd=self.tree,
                                    env=dict(self.env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
            try:
                out = proc.communicate(timeout=marker.timeout)[0]
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out = proc.communicate()[0] + f"\n(killed after {marker.timeout:.0f} s)"
            seconds = time.monotonic() - started
            outputs.append(out)
            if proc.returncode != 0:
                self.record(block, command, "FAIL", seconds, f"exit {proc.returncode}:\n{tail(out)}")
            elif not out.strip():
                self.record(block, command, "FAIL", seconds, "printed nothing")
            else:
                self.record(block, command, "ok", seconds, tail(out.strip(), 160).replace("\n", " ⏎ "))
        missing = self.unmet(marker.expect, lambda: "\n".join(outputs))
        if missing and outputs:
            self.record(block, "(the block's output)", "FAIL", 0.0,
                        f"lacks {missing} (what the prose promises):\n{tail(''.join(outputs))}")

    def stop(self, service, quiet=False):
        self.services.remove(service) if service in self.services else None
        problem = service.stop()
        if not quiet and problem:
            self.record(service.block, "(Ctrl-C)", "FAIL", detail=f"{problem}:\n{tail(service.output())}")
        elif not quiet and not service.output().strip():
            self.record(service.block, "(service)", "FAIL", detail="printed nothing")

    def close(self):
        for service in list(self.services):
            self.stop(service)


def leftovers(tree):
    """Pids of processes still running from the copy (a service that escaped its process group)."""
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if str(tree) in (proc / "cmdline").read_bytes().decode(errors="replace") \
                        or str(tree) in os.readlink(proc / "cwd"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def describe(block):
    m = block.marker
    if m is None:
        return f"{block.info or 'data'} (no command)"
    if m.kind == "run":
        how = ("service, " + " ".join(m.ready) if m.ready
               else f"terminal {m.terminal}" if m.terminal > 1 else "shell")
        extra = f"; leaves out {len(m.not_run)}" if m.not_run else ""
        return f"run ({how}{extra})"
    return m.kind + (f" — {', '.join(map(str, m.covers))}" if m.covers else "")


def test_documented_commands_run_as_printed(tmp_path):
    if not (ROOT / ".venv" / ".installed-stamp").exists():
        pytest.fail("the project's .venv is not installed: make install")
    found = all_blocks()
    assert [b.where for b in found if b.error] == [], "unclassified: see test_every_block_is_classified"
    load, cpus = os.getloadavg()[0], os.cpu_count()
    started, cpu_before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    tree = make_tree(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    ports = {port: free_port() for port in DOC_PORTS}
    print(f"\ndocs test in {tree}; ports {ports}; settings {settings(ports)}")
    print("\nblocks:")
    for b in found:
        print(f"  {b.where:32} {describe(b)}")
    results, seen = [], {}
    try:
        for page in PAGES:
            reader = Reader(tree, tmp_path / "home" / page.stem, ports, logs, results)
            try:
                for b in (b for b in found if b.page == page and b.marker and b.marker.kind == "run"):
                    key = (tuple(bare(c) for c in commands(b.text)), repr(b.marker))
                    if key in seen:
                        results.append((b.where, f"(same block as {seen[key]})", "ok", 0.0, "not run again"))
                        continue
                    seen[key] = b.where
                    reader.run(b)
            finally:
                reader.close()
    finally:
        stray = leftovers(tree)
        for pid in stray:
            os.kill(pid, signal.SIGKILL)
    wall = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)

    lines = ["commands run (outcome, seconds, where, command):"]
    for where, command, outcome, seconds, detail in results:
        lines.append(f"  {outcome:7} {seconds:6.1f} s  {where:32} {command}")
        if outcome != "ok" or detail:
            lines.append("                " + detail.replace("\n", "\n                ")[:2000])
    lines.append("\nnot run by the docs test, and what covers each instead:")
    for where, command, covers in not_run_list(found):
        lines.append(f"  {where:32} {bare(command)[:80]}\n      covered by: {'; '.join(map(str, covers))}")
    for target, cover in TARGETS_ELSEWHERE.items():
        lines.append(f"  {'(named in prose)':32} make {target}\n      covered by: {cover}")
    counts = {outcome: sum(r[2] == outcome for r in results) for outcome in ("ok", "FAIL", "skipped")}
    lines.append(f"\ndocs test: {wall:.0f} s wall (budget {BUDGET_SECONDS} s; load {load:.1f} on {cpus} CPUs "
                 f"at the start), {cpu:.0f} s CPU of its children, {counts['ok']} ok, "
                 f"{counts['FAIL']} failed, {counts['skipped']} skipped")
    # Written on a pass too: pytest shows a passing test's output only on request (-s, -rP), so the
    # tier's log (reports/tiers/) would hold the times only of a failed run.
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines) + f"\n(written to {REPORT.relative_to(ROOT)})")

    failed = [f"{w} {c}: {d}" for w, c, o, _, d in results if o == "FAIL"]
    skipped = [f"{w} {c}: {d}" for w, c, o, _, d in results if o == "skipped"]
    assert stray == [], f"processes outlived their service's Ctrl-C: {stray}"
    assert failed == [], "\n\n".join(failed)
    if skipped and os.environ.get("CI"):
        pytest.fail("skipped in CI:\n" + "\n".join(skipped))
    assert wall <= BUDGET_SECONDS, f"docs test took {wall:.0f} s (budget {BUDGET_SECONDS} s): {REPORT}"
