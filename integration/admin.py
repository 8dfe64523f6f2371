"""The agent's loopback admin endpoint: ``/metrics`` (Prometheus), ``/status`` (JSON),
``/ids`` (kernel id -> name, for ``sockmesh dump``), ``/healthz`` (liveness: the event loop
answers) and ``/ready`` (readiness: 200 once the first config is applied, 503 before).

One small asyncio HTTP/1.0 server in the agent's event loop, bound to 127.0.0.1 by default
(the ``--metrics-addr`` of ``sockmesh run``).  ``sockmesh status`` reads ``/status`` from it;
Prometheus scrapes ``/metrics``.  Values are read at request time, so a scrape shows the
kernel counters as they are now, not a cached copy.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from integration.metrics import AgentCollector

if TYPE_CHECKING:
    from integration.agent import Agent

log = logging.getLogger(__name__)
MAX_REQUEST_HEAD = 8192


class AdminServer:
    """Serves the admin endpoint of one agent."""

    def __init__(self, agent: Agent, host: str, port: int) -> None:
        self.agent = agent
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent))
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind and serve; raises OSError naming the address when it is taken."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise OSError(exc.errno, f"admin/metrics endpoint cannot listen on "
                                     f"{self.host}:{self.port}: {exc.strerror}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("admin endpoint on http://%s:%d (/metrics, /status)", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def render(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/status":
            body = json.dumps(self.agent.status(), indent=2, sort_keys=True) + "\n"
            return 200, "application/json", body.encode()
        if path == "/ids":
            body = json.dumps(self.agent.datapath_names(), sort_keys=True) + "\n"
            return 200, "application/json", body.encode()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/ready":
            return self._ready()
        return 404, "text/plain", b"not found: try /metrics, /status, /ready or /healthz\n"

    def _ready(self) -> tuple[int, str, bytes]:
        """200 once a config from the control server has been applied (like Envoy's /ready
        after its initial fetch), else 503 with what is still missing."""
        applied = getattr(self.agent, "applied", None)
        if applied is not None:
            versions = " ".join(f"{k}={v}" for k, v in sorted(applied.versions.items()))
            return 200, "text/plain", f"ready: config applied ({versions})\n".encode()
        st = self.agent.client.status
        why = ("no xDS stream to " + st.server + (f" ({st.last_error})" if st.last_error else "")
               if not st.connected else "waiting for the first complete config")
        return 503, "text/plain", f"not ready: {why}\n".encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            if len(head) > MAX_REQUEST_HEAD:
                raise ValueError("request head too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"GET only\n"
            else:
                # rendering reads kernel maps: keep it off the event loop
                status, ctype, body = await asyncio.to_thread(self.render, target)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed",
                      503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ConnectionError) as exc:
            log.debug("admin request failed: %s", exc)
        finally:
            writer.close()
