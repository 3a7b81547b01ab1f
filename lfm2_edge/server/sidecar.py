"""Running ``lfm2-edge serve``'s app: the socket, the readiness line, the parent watch.

Desktop apps that are not Python run ``serve`` as a sidecar: ``--port 0`` binds any
free port, one JSON line on stdout says where it listens once connections are accepted,
and ``--parent-pid`` ends the server (answers in flight finish) when the app is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from rich.console import Console

from lfm2_edge.errors import Lfm2EdgeError

__all__ = ["alive", "run_server"]


def run_server(
    app_: Any, host: str, port: int, name: str, capacity: str, *, verbose: bool, parent_pid: int | None
) -> None:
    """Bind (``port`` 0: any free port), serve, and write one JSON line on stdout once
    connections are accepted: ``{"event": "ready", "url": ..., "port": ..., "pid": ...}``.
    With ``parent_pid``, shut down (finishing the answers in flight) when that process ends."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    import socket
    import threading

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise Lfm2EdgeError(f"cannot listen on {host}:{port} ({exc.strerror}); --port 0 picks a free port") from None
    port = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{shown}:{port}/v1"
    config = uvicorn.Config(app_, log_level="info" if verbose else "warning", access_log=verbose)
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            sys.stdout.write(json.dumps({"event": "ready", "url": url, "port": port, "pid": os.getpid()}) + "\n")
            sys.stdout.flush()
            err.print(f"serving {name} at {url} ({capacity}, Ctrl-C to stop)")

    def watch_parent() -> None:
        assert parent_pid is not None
        while not server.should_exit:
            if not alive(parent_pid):
                err.print(f"parent process {parent_pid} is gone: shutting down")
                server.should_exit = True
                return
            time.sleep(0.5)

    threading.Thread(target=announce, daemon=True).start()
    if parent_pid is not None:
        if not alive(parent_pid):
            sock.close()
            raise Lfm2EdgeError(f"--parent-pid {parent_pid}: no such process")
        threading.Thread(target=watch_parent, daemon=True).start()
    # uvicorn finishes in-flight answers on SIGTERM / Ctrl-C, then re-raises the signal;
    # catch it so that a clean shutdown exits 0 (systemd reads anything else as a failure).
    signal.signal(signal.SIGTERM, lambda *_: None)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
