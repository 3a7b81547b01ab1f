"""``lfm2-edge serve``'s server: the FastAPI app (:func:`create_app`), its
:class:`ServerConfig`, and :func:`run_server` (the socket, the ready line, the parent
watch). The CLI's one door into this layer."""

from lfm2_edge.server.app import create_app
from lfm2_edge.server.config import ServerConfig
from lfm2_edge.server.sidecar import run_server

__all__ = ["ServerConfig", "create_app", "run_server"]
