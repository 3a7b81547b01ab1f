"""``lfm2-edge serve``'s server: the FastAPI app (:func:`create_app`), its
:class:`ServerConfig`, the :class:`Pool` of the models it serves, and :func:`run_server`
(the socket, the ready line, the parent watch). The CLI's one door into this layer."""

from lfm2_edge.server.app import create_app
from lfm2_edge.server.config import ServerConfig
from lfm2_edge.server.pool import Pool, Served, default_budget, parse_duration, size_of
from lfm2_edge.server.sidecar import run_server

__all__ = ["Pool", "Served", "ServerConfig", "create_app", "default_budget", "parse_duration", "run_server", "size_of"]
