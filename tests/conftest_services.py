"""Real services on loopback for the distributed tests and benchmarks: a throw-away PostgreSQL server and a local
Ray cluster (head node, optionally a second node), each started in a temporary directory and stopped afterwards.

Imported explicitly (``from conftest_services import ...``); not a pytest plugin.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: the repository importable, one BLAS/OpenMP thread (tiny models; a shared
    2-core machine), Ray kept on the loopback interface and without usage reporting."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(RAY_LOOPBACK_ENV)
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bindir() -> Path | None:
    """Directory with initdb/pg_ctl: $PG_BIN, ``pg_config --bindir``, the newest /usr/lib/postgresql/*/bin, or
    PATH."""
    cands = []
    if os.environ.get("PG_BIN"):
        cands.append(Path(os.environ["PG_BIN"]))
    if shutil.which("pg_config"):
        with contextlib.suppress(Exception):
            cands.append(Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                             timeout=10).stdout.strip()))
    vers = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: float(Path(p).parent.name)
                  if Path(p).parent.name.replace(".", "").isdigit() else 0.0, reverse=True)
    cands += [Path(p) for p in vers]
    if shutil.which("initdb"):
        cands.append(Path(shutil.which("initdb")).parent)
    for c in cands:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    return None


class Postgres:
    """A PostgreSQL server in a temporary directory, listening on 127.0.0.1:<free port> (trust authentication for
    the loopback only; unix socket in the same directory). As root, it runs as the ``postgres`` user (initdb refuses
    root), else as ``nobody``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "autoprune"
        self._runas: list[str] = []
        if os.geteuid() == 0:
            owner = "postgres"
            try:
                pwd.getpwnam(owner)
            except KeyError:
                owner = "nobody"
            pw = pwd.getpwnam(owner)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.dir, 0o700)
            runuser = shutil.which("runuser")
            self._runas = [runuser, "-u", owner, "--"] if runuser else ["su", owner, "-s", "/bin/sh", "-c"]
        self.log = self.dir / "server.log"

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = self._runas + args
        if self._runas and self._runas[0] == "su":
            import shlex

            cmd = self._runas + [" ".join(shlex.quote(a) for a in args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)

    def start(self) -> "Postgres":
        r = self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                       "-E", "UTF8", "--no-locale", "--no-sync"], timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{r.stdout}\n{r.stderr}")
        return self.resume()

    def halt(self) -> None:
        """Stop the server at once (``pg_ctl stop -m immediate``: a crash, as far as clients can tell), keeping its
        data; :meth:`resume` starts it again on the same port."""
        r = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                      timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed:\n{r.stdout}\n{r.stderr}")

    def resume(self) -> "Postgres":
        """Start the server (again) on its data directory and port."""
        # fsync=off keeps it fast; commits still write their WAL to the OS before returning (synchronous_commit
        # stays on), so what a client saw committed survives halt() (an immediate stop) as it would a real crash
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                "-c fsync=off -c full_page_writes=off -c shared_buffers=16MB "
                "-c max_connections=60")
        r = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
                       "-w", "-t", "60", "start"], timeout=90)
        if r.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{r.stdout}\n{r.stderr}\n{log}")
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def createdb(self, name: str) -> str:
        r = self._run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                       name])
        if r.returncode != 0:
            raise RuntimeError(f"createdb failed: {r.stderr}")
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                      timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    pg = Postgres(bindir)
    try:
        yield pg.start()
    finally:
        pg.stop()


# ------------------------------------------------------------------------------------------------------------
# Ray

#: Keeps every Ray process and connection on 127.0.0.1: Ray otherwise rewrites 127.0.0.1 in a cluster address to the
#: machine's network address. No usage statistics are sent.
#: No token authentication either: with it unset, Ray 2.60 turns it on for `ray start` whenever ~/.ray/auth_token
#: exists (any earlier local ray.init writes one), and a driver given an explicit address then lacks the token.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_DISABLE_DOCKER_CPU_WARNING": "1", "RAY_AUTH_MODE": "disabled"}


def _ray_bin() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


class RayCluster:
    """``ray start --head`` on 127.0.0.1:<free port> (2 CPUs, no dashboard, a small object store); ``stop()`` ends
    this cluster's processes by pid.

    Single node only: with Ray held on the loopback (:data:`RAY_LOOPBACK_ENV`), ``ray start --address`` refuses to
    join a second node, and without it Ray would talk to the machine's network address instead of 127.0.0.1."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.num_cpus = num_cpus
        self.temp = Path(tempfile.mkdtemp(prefix="aprray-", dir="/tmp"))  # short: Ray's socket paths are limited
        self.env = child_env()

    def _ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([_ray_bin(), *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              cwd=ROOT)

    def start(self) -> "RayCluster":
        r = self._ray("start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                      f"--num-cpus={self.num_cpus}", "--num-gpus=0", "--include-dashboard=false",
                      "--object-store-memory=100000000", f"--temp-dir={self.temp}", "--disable-usage-stats")
        if r.returncode != 0:
            raise RuntimeError(f"ray start --head failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return self

    def pids(self) -> list[int]:
        """This cluster's processes: those whose command line names its temp dir (GCS, raylets, agents) and all
        their descendants (the workers)."""
        return _pids_under(str(self.temp))

    def stop(self) -> None:
        """Stop this cluster's processes by pid: SIGTERM, then SIGKILL after 2 s (``ray stop --force`` kills at
        once, but every Ray process of the machine; other clusters on the machine are left alone here)."""
        _terminate(self.pids())
        shutil.rmtree(self.temp, ignore_errors=True)


@contextlib.contextmanager
def ray_cluster(num_cpus: int = 2) -> Iterator[RayCluster]:
    c = RayCluster(num_cpus)
    try:
        yield c.start()
    finally:
        c.stop()


def _proc_table() -> dict[int, tuple[int, str]]:
    """{pid: (ppid, command line)} from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        out[int(d)] = (ppid, cmd)
    return out


def _pids_under(marker: str) -> list[int]:
    table = _proc_table()
    roots = {pid for pid, (_, cmd) in table.items() if marker in cmd and pid != os.getpid()}
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier and pid not in found}
        found |= frontier
    return sorted(found)


def _terminate(pids: list[int], grace: float = 2.0) -> None:
    import signal

    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + grace
    alive = list(pids)
    while alive and time.time() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def wait_until(pred, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")
