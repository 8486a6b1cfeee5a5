"""Several node processes behind one port (``server.workers``).

One event loop is a node's limit: under load its process runs at one full core while
the database and the machine's other core have room (see the README's Performance
section). Each worker is a whole node — API and scheduler — with an identity of its own,
``<node_id>/<n>``: claims are as safe across processes as across nodes, and a worker
restarted under its identity takes its own orphaned jobs back at once.

The parent (``jobnode serve``, which has migrated the database) binds the port, restarts
a worker that dies, and on SIGTERM or SIGINT stops every worker gracefully (each hands
its unfinished jobs back). Each worker listens on a socket of its own bound to that port
(``SO_REUSEPORT``): the kernel spreads new connections over them evenly. On one shared
listening socket the worker that woke first took every connection waiting (uvloop
accepts until none is left): 32 connections opened together split 25/7 in a third of
the benchmark's windows, one worker loaded and the other with little to batch. The
parent's socket never listens: it holds the port, and is shared as it is where
``SO_REUSEPORT`` is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

import msgspec

from app.config.settings import Settings

log = logging.getLogger("jobnode")

#: A worker that fails (exits with an error, not killed by a signal) this soon after its
#: start is not restarted: it would only fail again (an unreachable database, say); the
#: node exits instead.
MIN_UPTIME_SECONDS = 5.0
PR_SET_PDEATHSIG = 1
_REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


def worker_settings(settings: Settings, index: int) -> Settings:
    scheduler = msgspec.structs.replace(settings.scheduler, node_id=f"{settings.node_id}/{index}")
    return msgspec.structs.replace(settings, scheduler=scheduler)


def _bound(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def bind(host: str, port: int) -> socket.socket:
    """The parent's socket. Bound once without ``SO_REUSEPORT`` first, and closed: a port
    that anything holds fails here, as it did before the workers had sockets of their
    own (two nodes started on one port by mistake must not share it without a word)."""
    if not _REUSE_PORT:
        return _bound(host, port, reuse_port=False)
    probe = _bound(host, port, reuse_port=False)
    port = probe.getsockname()[1]  # port 0: the one the system chose
    probe.close()
    return _bound(host, port, reuse_port=True)


def own_socket(shared: socket.socket) -> socket.socket:
    """A worker's listening socket: its own, on the parent's address (``SO_REUSEPORT``),
    or the parent's where the platform has no such option."""
    if not _REUSE_PORT:
        return shared
    address = shared.getsockname()
    sock = _bound(address[0], address[1], reuse_port=True)
    shared.close()
    return sock


class Supervisor:
    def __init__(self, settings: Settings, run_worker: Callable[[Settings, socket.socket], None]) -> None:
        self.settings = settings
        self.run_worker = run_worker
        self.count = settings.server.workers
        self._context = multiprocessing.get_context("spawn")
        self._stopping = False

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the database is migrated already (``jobnode serve``)."""
        sock = bind(self.settings.server.host, self.settings.server.port)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        workers = {index: self._start(index, sock) for index in range(self.count)}
        log.info("serving on %s:%d with %d workers", self.settings.server.host, self.settings.server.port, self.count)
        try:
            while not self._stopping:
                for index, (process, started) in list(workers.items()):
                    if process.is_alive() or self._stopping:
                        continue
                    if (process.exitcode or 0) > 0 and time.monotonic() - started < MIN_UPTIME_SECONDS:
                        log.error("worker %d exited with %s right after its start; stopping", index, process.exitcode)
                        return 1
                    log.warning("worker %d exited with %s; restarting it", index, process.exitcode)
                    workers[index] = self._start(index, sock)
                time.sleep(0.2)
            return 0
        finally:
            self._stop_all([process for process, _ in workers.values()])
            sock.close()

    def _start(self, index: int, sock: socket.socket) -> tuple[BaseProcess, float]:
        process = self._context.Process(
            target=_worker_main,
            args=(self.run_worker, worker_settings(self.settings, index), sock, os.getpid()),
            name=f"jobnode-worker-{index}",
            daemon=False,
        )
        process.start()
        return process, time.monotonic()

    def _stop(self, _signum: int, _frame: object) -> None:
        self._stopping = True

    def _stop_all(self, processes: list[BaseProcess]) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.scheduler.shutdown_grace + 15
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %s did not stop in time; killing it", process.name)
                process.kill()
                process.join(5)


def _worker_main(
    run_worker: Callable[[Settings, socket.socket], None], settings: Settings, sock: socket.socket, parent: int
) -> None:
    # A session of its own: a Ctrl-C at the terminal reaches the parent only, which then
    # stops each worker once (a second signal would make uvicorn skip the graceful part).
    os.setsid()
    _stop_with_parent(parent)
    run_worker(settings, own_socket(sock))


def _stop_with_parent(parent: int) -> None:
    """A worker whose parent died (SIGKILL) stops gracefully rather than serve on alone
    (Linux: PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM is the only way
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
