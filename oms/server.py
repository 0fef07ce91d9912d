"""`oms serve` with N worker processes, each listening on the port with SO_REUSEPORT.

uvicorn's own multi-worker mode shares one listening socket, and under a burst of keep-alive
connections the first free worker accepts nearly all of them while the others idle. With
SO_REUSEPORT the kernel spreads new connections over the workers' sockets evenly.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import socket
import time

log = logging.getLogger("oms.server")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def check_port(host: str, port: int) -> None:
    """Exit with a plain message when the port cannot be listened on (e.g. already in use)."""
    try:
        _listen(host, port).close()
    except OSError as exc:
        raise SystemExit(f"oms serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _worker(host: str, port: int, log_level: str, reuse_port: bool) -> None:
    import uvicorn

    from oms.infra.http import PROTOCOL

    # no proxy in front by default: skip the forwarded-header middleware on every request
    config = uvicorn.Config("oms.app:create_app", factory=True, log_level=log_level, access_log=False,
                            loop="auto", http=PROTOCOL, backlog=4096, proxy_headers=False, server_header=False)
    server = uvicorn.Server(config)
    sockets = [_listen(host, port)] if reuse_port else None
    if sockets is None:
        config.host, config.port = host, port
    server.run(sockets=sockets)


def serve(host: str, port: int, workers: int, log_level: str) -> None:
    """Run `workers` processes until SIGINT/SIGTERM; a worker that dies is started again."""
    if workers <= 1:
        _worker(host, port, log_level, reuse_port=False)
        return
    reuse = hasattr(socket, "SO_REUSEPORT")
    ctx = mp.get_context("spawn")
    procs: list[mp.Process] = []
    stopping = False

    def start() -> mp.Process:
        p = ctx.Process(target=_worker, args=(host, port, log_level, reuse), daemon=False)
        p.start()
        return p

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        procs = [start() for _ in range(workers)]
        while not stopping:
            time.sleep(0.5)
            for i, p in enumerate(procs):
                if not p.is_alive() and not stopping:
                    log.warning("worker %s exited with %s; starting another", p.pid, p.exitcode)
                    procs[i] = start()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()  # uvicorn finishes in-flight requests on SIGTERM
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        for sig, handler in old.items():
            signal.signal(sig, handler)
