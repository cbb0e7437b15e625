"""A throwaway PostgreSQL cluster on loopback: for `make scaleout`, the tests and the benchmarks.

PostgreSQL refuses to run as root, and CI runs as root: the cluster then belongs to an
unprivileged system user (`postgres` when Debian's package made it, else `nobody`).
"""

import contextlib
import glob
import os
import pathlib
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile

from .process import Server, free_port

SUPERUSER = "postgres"
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "100",
    "shared_buffers": "128MB",
    # Durability as in production: feedback commits must reach the disk (fsync on).
    "fsync": "on",
    "log_destination": "'stderr'",
    "logging_collector": "off",
    "log_line_prefix": "'%m [%p] '",
}


class PostgresError(RuntimeError):
    """The cluster could not be created or started; the message says what to install or fix."""


def bindir():
    """Directory of the server binaries: pg_config's, else Debian's newest, else PATH."""
    candidates = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                         check=True).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
                         reverse=True)
    for directory in candidates:
        if os.access(os.path.join(directory, "postgres"), os.X_OK):
            return directory
    found = shutil.which("postgres")
    if found:
        return os.path.dirname(os.path.realpath(found))
    raise PostgresError("PostgreSQL server binaries not found (apt-get install postgresql)")


def run_as():
    """(uid, gid) to run the server as: ourselves, or an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise PostgresError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL")


class Cluster(Server):
    """initdb + postgres in `base`, listening on 127.0.0.1:`port` and a socket inside `base`."""

    what, error = "postgres", PostgresError
    stop_signal = signal.SIGINT  # PostgreSQL's fast shutdown; SIGKILL is a crash

    def __init__(self, base, port=None, settings=None):
        self.base = pathlib.Path(base).resolve()
        self.data, self.sockets = self.base / "data", self.base / "sockets"
        self.log = self.base / "postgres.log"
        self.port = port or free_port()
        self.settings = {**SETTINGS, **(settings or {})}
        self.bin = bindir()
        self.uid, self.gid = run_as()

    def _run(self, *args, **kwargs):
        """A server binary as the cluster's user; its output on failure."""
        done = subprocess.run([os.path.join(self.bin, args[0]), *args[1:]], capture_output=True, text=True,
                              user=self.uid, group=self.gid, extra_groups=[], cwd=self.base, **kwargs)
        if done.returncode != 0:
            raise PostgresError(f"{args[0]} failed: {(done.stderr or done.stdout).strip()[-800:]}")
        return done

    def _prepare(self):
        """The cluster's directory, owned by its user (created once; reused when it exists)."""
        self.base.mkdir(parents=True, exist_ok=True)
        for path in (self.base, self.sockets):
            path.mkdir(exist_ok=True)
            os.chown(path, self.uid, self.gid)
        if not self._reachable_by_user(self.base):
            raise PostgresError(f"{self.base}: its parent directories are not traversable by uid "
                                f"{self.uid}; put the cluster elsewhere (e.g. under /tmp)")
        if (self.data / "PG_VERSION").exists():
            return
        # Local (socket) connections trust the OS user; TCP ones need a password (scram).
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")

    def _reachable_by_user(self, path):
        """True when the cluster's user can enter path (every parent lets it through)."""
        return subprocess.run(["test", "-x", str(path)], user=self.uid, group=self.gid,
                              extra_groups=[]).returncode == 0

    def start(self, timeout=30):
        """Start the server and wait until it accepts connections."""
        self._prepare()
        options = [f"--port={self.port}", f"--unix_socket_directories={self.sockets}"]
        options += [f"--{k}={v.strip(chr(39))}" for k, v in self.settings.items()]
        self.log.touch()
        os.chown(self.log, self.uid, self.gid)
        self.spawn([os.path.join(self.bin, "postgres"), "-D", str(self.data), *options], self.log,
                   user=self.uid, group=self.gid, extra_groups=[], cwd=self.base)
        self.wait_ready(self._run_ready, timeout, 0.1)
        return self

    def _run_ready(self):
        done = subprocess.run([os.path.join(self.bin, "pg_isready"), "-q", "-h", str(self.sockets),
                               "-p", str(self.port), "-U", SUPERUSER], capture_output=True)
        return done.returncode == 0

    def superuser_dsn(self, dbname="postgres"):
        """Connection string for the superuser over the cluster's own socket."""
        return f"host={self.sockets} port={self.port} user={SUPERUSER} dbname={dbname}"

    def sql(self, statement, dbname="postgres"):
        """Run one statement as the superuser (autocommit); rows when it returns any."""
        import psycopg

        with psycopg.connect(self.superuser_dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else None

    def create_database(self, name, password=None):
        """A database owned by a login role of the same name; its postgresql:// URL (TCP, password)."""
        password = password or secrets.token_urlsafe(16)
        self.sql(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
        self.sql(f"CREATE DATABASE \"{name}\" OWNER \"{name}\"")
        return f"postgresql://{name}:{password}@127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def throwaway(prefix="calories-pg-"):
    """A started cluster in a fresh directory under /tmp, stopped (no checkpoint) and removed on exit.

    Not under a caller's private temporary directory (mode 0700, root's when we are root): the
    server's own user must enter it."""
    base = tempfile.mkdtemp(prefix=prefix)
    try:
        os.chmod(base, 0o755)
        cluster = Cluster(base).start()
        try:
            yield cluster
        finally:
            # Immediate shutdown: the directory is removed next, so the fast shutdown's checkpoint
            # (seconds of fsync after a test session's databases, 9 s of the unit tier) writes files
            # nobody reads.
            cluster.stop(signal.SIGQUIT)
    finally:
        shutil.rmtree(base, ignore_errors=True)
