"""Connecting to a Ray cluster (or starting a local instance) for the Ray backend, failing within seconds with a
message naming the address when nothing answers there. Ray is imported only when :func:`connect` is called."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from typing import Any, Callable, Mapping

from ..storage import StorageUnreachable, check_reachable

__all__ = ["connect", "RayUnreachable"]


class RayUnreachable(ConnectionError):
    """No Ray cluster answers at the given address (or it lacks the requested resources)."""

def _split_address(address: str) -> tuple[str, int] | None:
    a = address
    for prefix in ("ray://", "http://", "https://"):
        if a.startswith(prefix):
            a = a[len(prefix):]
    a = a.rstrip("/")
    if a.startswith("["):  # [v6]:port
        host, _, port = a[1:].partition("]:")
    else:
        host, _, port = a.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host, int(port)


def connect(address: str | None = None, *, timeout: float = 30.0, runtime_env: Mapping[str, Any] | None = None,
            log: Callable[[str], None] | None = None) -> bool:
    """Connect to a Ray cluster, or start a local instance; return True when this call initialised Ray (and so the
    caller should ``ray.shutdown()`` it), False when Ray was already initialised in this process.

    ``address``: ``None`` (``$RAY_ADDRESS`` if set, else a new local instance), ``"auto"`` (the cluster started with
    ``ray start`` on this machine), ``"HOST:PORT"`` (the head node's GCS port, ``ray start --head --port``, default
    6379) or ``"ray://HOST:10001"`` (Ray Client). A ``HOST:PORT`` is first checked with a TCP connection (5 s);
    ``ray.init`` itself is abandoned after ``timeout`` seconds. Either failure raises :class:`RayUnreachable` naming
    the address and what to check.
    """
    import ray

    log = log or (lambda s: None)
    if ray.is_initialized():
        return False
    target = address if address is not None else os.environ.get("RAY_ADDRESS") or None
    if target not in (None, "auto", "local"):
        hp = _split_address(target)
        if hp is None:
            raise ValueError(f"Ray address {target!r}: expected auto, HOST:PORT or ray://HOST:PORT")

        try:
            check_reachable(hp[0], hp[1], timeout=min(5.0, timeout), what="Ray head node")
        except StorageUnreachable as e:
            raise RayUnreachable(f"Ray address {target}: {e}. Start the cluster with `ray start --head "
                                 f"--port={hp[1]}` on {hp[0]}, or check the address (`ray status` on the head node "
                                 "prints it) and the firewall.") from None
        why = _grpc_probe(hp[0], hp[1], timeout=min(5.0, timeout))
        if why:
            raise RayUnreachable(f"Ray address {target}: {why}. That port is open but no Ray head node answers "
                                 "there: the address is the --port of `ray start --head` (default 6379), or "
                                 "ray://HOST:10001 for Ray Client; `ray status` on the head node prints it.")
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False, "configure_logging": True}
    if runtime_env:
        kwargs["runtime_env"] = dict(runtime_env)
    if target in (None, "local"):
        kwargs["include_dashboard"] = False
    else:
        kwargs["address"] = target
    box: dict[str, Any] = {}

    def init() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ray.init(**kwargs)
            box["ok"] = True
        except BaseException as e:  # handed to the caller
            box["err"] = e

    t0 = time.monotonic()
    if target in (None, "local"):
        # A new local instance: its processes die with the thread that started them (PR_SET_PDEATHSIG), so start it
        # from this thread. Nothing remote to wait for.
        init()
        t = None
    else:  # connecting: abandon ray.init after `timeout` seconds
        logging.getLogger("ray._private.worker").addFilter(_NoThreadSigtermWarning())
        t = threading.Thread(target=init, name="autoprune-ray-init", daemon=True)
        t.start()
        t.join(timeout)
    if t is not None and t.is_alive():
        raise RayUnreachable(f"Ray address {target}: no Ray cluster answered within {timeout:g} s (something "
                             "listens on that port, but not a Ray head node's GCS?). Check the address: it is the "
                             "--port of `ray start --head` (default 6379); `ray status` on the head prints it.")
    err = box.get("err")
    if err is not None:
        what = target or "a new local Ray instance"
        hint = ("start one with `ray start --head` on this machine, or give --address HOST:PORT"
                if target == "auto" else "check the address and that the head node runs (`ray status`)")
        if target not in (None, "local") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint += ("; if the cluster uses token authentication (`ray start` turns it on when ~/.ray/auth_token "
                     "exists), set RAY_AUTH_MODE=token and give the cluster's token in ~/.ray/auth_token, "
                     "$RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH")
        raise RayUnreachable(f"Ray address {what}: {type(err).__name__}: {err}; {hint}") from err
    log(f"ray: connected to {target or 'a new local instance'} in {time.monotonic() - t0:.1f} s "
        f"({_describe(ray.cluster_resources())})")
    return True


def _grpc_probe(host: str, port: int, timeout: float = 5.0) -> str | None:
    """None when an HTTP/2 (gRPC) server answers at host:port -- Ray's GCS and Ray Client servers do --, else why
    not. Sends the HTTP/2 client preface and an empty SETTINGS frame, and expects a SETTINGS frame back."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            data = b""
            while len(data) < 9:
                chunk = s.recv(9 - len(data))
                if not chunk:
                    return "the server closed the connection without an HTTP/2 answer"
                data += chunk
    except socket.timeout:
        return f"no gRPC answer within {timeout:g} s"
    except OSError as e:
        return f"connection failed ({e.strerror or e})"
    return None if data[3] == 0x04 else "the server does not speak gRPC (HTTP/2)"


class _NoThreadSigtermWarning(logging.Filter):
    """ray.init runs in a helper thread (so that it can be abandoned after a time-out); Ray then warns that it did
    not install its SIGTERM handler (the CLI turns SIGTERM into KeyboardInterrupt itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _describe(res: Mapping[str, float]) -> str:
    cpu, gpu = res.get("CPU", 0), res.get("GPU", 0)
    nodes = sum(1 for k in res if k.startswith("node:") and not k.startswith("node:__"))
    return f"{nodes} node(s), {cpu:g} CPUs, {gpu:g} GPUs"
