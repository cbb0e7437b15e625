"""A private Docker daemon for tests and measurements, removed afterwards with all it created.

It has its own data-root, exec-root, socket, bridge and cgroup parent, and touches no iptables
chain and no sysctl (`--iptables=false`), so it collides with no other daemon on the machine.
Without NAT, containers reach only the host: builds that download use `--network=host`, and
published ports work through docker-proxy on 127.0.0.1.

    python -m loopback.dockerd -- COMMAND...

runs COMMAND with DOCKER_HOST pointing at a fresh private daemon and cleans up after it.
"""

import contextlib
import ipaddress
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile

from .process import Server, terminate

# Debian's 20.10 CLI has BuildKit built in; a newer CLI without the buildx plugin refuses it.
DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else (shutil.which("docker") or "docker")
TOOLS = ("dockerd", "containerd", "runc", "ip")


class DockerdError(RuntimeError):
    """The private daemon could not start or stop cleanly."""


def missing_tools():
    """What a private daemon needs that this machine lacks (root, binaries), as readable strings."""
    lacking = [] if os.geteuid() == 0 else ["root privileges"]
    lacking += [t for t in TOOLS if shutil.which(t) is None]
    return lacking + ([] if shutil.which(DOCKER) else [DOCKER])


def _ip(*args):
    """Run one `ip` command; raise with its message on failure."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise DockerdError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def free_subnet():
    """A /24 in 10.200-254.x.x that no route on this host overlaps."""
    taken = [ipaddress.ip_network(line.split()[0], strict=False)
             for line in _ip("-4", "route", "show", "table", "all").splitlines()
             if line and line.split()[0][0].isdigit()]
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(200, 254)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise DockerdError("no free 10.x.x.0/24 subnet for the bridge")


def ram_size(gib=4):
    """A tmpfs size for the daemon's files when RAM holds them easily, else None (they go to disk)."""
    meminfo = pathlib.Path("/proc/meminfo").read_text()
    available_gib = int(re.search(r"MemAvailable:\s+(\d+) kB", meminfo).group(1)) / 2**20
    return f"{gib}g" if available_gib >= 3 * gib else None


class PrivateDockerd(Server):
    """dockerd with everything of its own; `start()`, `docker(...)`, `stop()` (or use `with`)."""

    what, error = "dockerd", DockerdError

    def __init__(self, tmpfs_size="auto"):
        # A short path: containerd's sockets live under the exec-root (sun_path holds 108 bytes).
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="calories-dockerd-", dir="/tmp"))
        # Files in RAM when it has room: no fsync or discard costs, and gone at once on unmount.
        self.tmpfs_size = ram_size() if tmpfs_size == "auto" else tmpfs_size
        self.name = f"cal{os.getpid() % 100000}{random.randint(0, 99):02d}"  # bridge: 15 chars at most
        self.host = f"unix://{self.root / 'docker.sock'}"
        self.log = self.root / "dockerd.log"
        self.env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}

    def start(self, timeout=60):
        """Create the bridge, start the daemon and wait until it answers; undo it all on failure."""
        lacking = missing_tools()
        if lacking:
            raise DockerdError(f"cannot run a private dockerd: missing {', '.join(lacking)}")
        try:
            self._launch()
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self):
        """The tmpfs (if any), the bridge, then dockerd in a session of its own."""
        if self.tmpfs_size:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.tmpfs_size},mode=0711", "tmpfs",
                            str(self.root)], check=True, capture_output=True)
        net = free_subnet()
        _ip("link", "add", self.name, "type", "bridge")
        _ip("addr", "add", f"{net[1]}/{net.prefixlen}", "dev", self.name)
        _ip("link", "set", self.name, "up")
        args = ["dockerd", f"--data-root={self.root / 'data'}", f"--exec-root={self.root / 'exec'}",
                f"--host={self.host}", f"--pidfile={self.root / 'docker.pid'}", f"--bridge={self.name}",
                "--iptables=false", "--ip-forward=false", "--ip-masq=false",
                f"--cgroup-parent=/{self.name}", "--log-level=warn"]
        self.spawn(args, self.log)

    def _wait(self, timeout):
        """Until `docker version` answers; the daemon's log in the error otherwise."""
        self.wait_ready(lambda: self.docker("version", check=False, timeout=10).returncode == 0, timeout, 0.3)

    def docker(self, *args, check=True, timeout=600, **kwargs):
        """Run the docker CLI against this daemon; text output captured unless told otherwise."""
        kwargs.setdefault("capture_output", True)
        done = subprocess.run([DOCKER, *args], env=self.env, text=True, timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            raise DockerdError(f"docker {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done

    def stop(self):
        """Remove containers, networks and volumes, stop the daemon, then delete what is left of it."""
        bridges = [self.name]
        if self.running():
            with contextlib.suppress(DockerdError, subprocess.TimeoutExpired):
                bridges += self._remove_all()
            self._terminate()
        self._unmount_all()
        for bridge in bridges:
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
        self._remove_cgroups()
        shutil.rmtree(self.root, ignore_errors=True)

    def _remove_all(self):
        """Containers, user networks (their bridges are returned) and volumes of this daemon."""
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids, timeout=120)
        nets = self.docker("network", "ls", "-q", "--filter", "type=custom").stdout.split()
        bridges = [f"br-{n[:12]}" for n in nets]
        if nets:
            self.docker("network", "rm", *nets, check=False)
        self.docker("volume", "prune", "-f", check=False)
        return bridges

    def _terminate(self):
        """SIGTERM the daemon alone (it stops its containerd), SIGKILL what is left of its session."""
        terminate(self.proc, group=False)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _remove_cgroups(self):
        """The cgroup parent in every hierarchy (v1: one per controller; v2: one), once empty."""
        top = pathlib.Path("/sys/fs/cgroup")
        for cgroup in [top / self.name, *top.glob(f"*/{self.name}")]:
            if cgroup.is_dir():
                children = [p for p in cgroup.rglob("*") if p.is_dir()]
                for child in sorted(children, key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        child.rmdir()
                with contextlib.suppress(OSError):
                    cgroup.rmdir()

    def _unmount_all(self):
        """Unmount anything still mounted under the root (overlays, shm, netns, the tmpfs), deepest first."""
        root = str(self.root)
        mounts = [line.split()[1] for line in pathlib.Path("/proc/mounts").read_text().splitlines()]
        mine = [m for m in mounts if m == root or m.startswith(root + "/")]
        for point in sorted(mine, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)


def main(argv=None):
    """python -m loopback.dockerd -- COMMAND...: COMMAND against a fresh private daemon."""
    argv = sys.argv[1:] if argv is None else argv
    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    with PrivateDockerd() as daemon:
        print(f"private dockerd at {daemon.host}", file=sys.stderr)
        return subprocess.run(command, env=daemon.env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
