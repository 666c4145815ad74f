"""HTTPS listeners, one per simulated node, like each node's pveproxy.

Every node gets its own listener on 127.0.0.1 (ephemeral port) with its own
certificate signed by the cluster CA; a request that arrives on node X's
listener is handled with `served_by=X`, so the agent on each node talks to
"its own" local API as on PVE.

A node that is unreachable (powered off, or its network cut) must look dead
to clients: its listener accepts nothing useful — the TCP connection stays
silent (no TLS handshake, no answer) until the client gives up, which is
what a client of a powered-off host or a partitioned network sees (a
timeout). Keep-alive connections opened before the node went away go just
as silent.

The TLS handshake runs in the connection's own thread, so a silent or slow
client never blocks the accept loop.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pvesim.faults import SimulatedResetError, SimulatedTimeoutError, pve_error
from pvesim.protocol import ApiHandler, ApiResponse
from pvesim.tls import ClusterPki, NodeCert
from pvesim.transport import BadRequestError, parse_api_request

log = logging.getLogger("pvesim.server")

_MAX_BODY = 1024 * 1024
_HANDSHAKE_TIMEOUT = 10.0
_IDLE_TIMEOUT = 60.0
# How long an unreachable node keeps a connection silent at most.
_DEAD_HOLD = 120.0


def _server_context(cert: NodeCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert.cert_path), str(cert.key_path))
    return ctx


class _NodeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        node: str,
        handler: ApiHandler,
        context: ssl.SSLContext,
        reachable: Callable[[str], bool],
    ) -> None:
        self.node = node
        self.api = handler
        self.context = context
        self.reachable = reachable
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _ApiRequestHandler)

    def is_reachable(self) -> bool:
        return self.reachable(self.node)

    def hold_silently(self, sock: socket.socket, limit: float) -> None:
        """Keep `sock` open without a word until the peer closes it, `limit`
        seconds pass, or the server stops."""
        waited = 0.0
        while waited < limit and not self.stopping.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], 0.2)
            except (OSError, ValueError):
                return
            waited += 0.2
            if readable:
                try:
                    if not sock.recv(4096):
                        return
                except (OSError, ssl.SSLError):
                    return

    def finish_request(self, request: Any, client_address: Any) -> None:
        raw: socket.socket = request
        if not self.is_reachable():
            self.hold_silently(raw, _DEAD_HOLD)
            return
        # Headers and body go out in separate writes; without NODELAY, Nagle
        # plus the client's delayed ACK would add ~40 ms to every answer.
        with contextlib.suppress(OSError):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(_HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("%s: TLS handshake with %s failed: %s", self.node, client_address, exc)
            return
        tls.settimeout(_IDLE_TIMEOUT)
        with self._conns_lock:
            self._conns.add(tls)
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        except (OSError, ssl.SSLError) as exc:
            log.debug("%s: connection from %s ended: %s", self.node, client_address, exc)
        finally:
            with self._conns_lock:
                self._conns.discard(tls)
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("%s: error serving %s", self.node, client_address)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashing server's kernel does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _ApiRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"
    sys_version = ""
    server: _NodeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: %s", self.server.node, format % args)

    def _serve(self) -> None:
        srv = self.server
        if not srv.is_reachable():
            # The node died between requests on a kept-alive connection.
            self.close_connection = True
            srv.hold_silently(self.connection, _DEAD_HOLD)
            return
        length_text = self.headers.get("content-length", "0") or "0"
        try:
            length = int(length_text)
        except ValueError:
            self._write(pve_error(400, "invalid Content-Length"))
            self.close_connection = True
            return
        if length > _MAX_BODY:
            self._write(pve_error(413, "request too large"))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            request = parse_api_request(self.command, self.path, headers, body, srv.node)
        except BadRequestError as exc:
            self._write(pve_error(exc.status, str(exc)))
            return
        try:
            response = srv.api.handle(request)
        except SimulatedTimeoutError as exc:
            self.close_connection = True
            srv.hold_silently(self.connection, exc.hold)
            return
        except SimulatedResetError:
            self.close_connection = True
            _reset(self.connection)
            return
        except Exception as exc:  # an API bug must not kill the listener
            log.exception("%s: handler failed on %s %s", srv.node, self.command, request.path)
            response = pve_error(500, f"internal error: {exc}")
        self._write(response)

    def _write(self, response: ApiResponse) -> None:
        reason = " ".join(response.reason.split())
        self.send_response(response.status, reason)
        sent = {"content-length"}
        for name, value in response.headers.items():
            if name.lower() in sent:
                continue
            self.send_header(name, value)
            sent.add(name.lower())
        if "cache-control" not in sent:
            self.send_header("Cache-Control", "max-age=0")
        if "pragma" not in sent:
            self.send_header("Pragma", "no-cache")
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = _serve  # noqa: N815 - names fixed by BaseHTTPRequestHandler
    do_POST = _serve  # noqa: N815
    do_PUT = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815


class NodeServer:
    """One node's HTTPS API listener."""

    def __init__(
        self,
        node: str,
        handler: ApiHandler,
        cert: NodeCert,
        reachable: Callable[[str], bool] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        probe = reachable or _default_reachable(handler)
        self.node = node
        self._httpd = _NodeHTTPServer((host, port), node, handler, _server_context(cert), probe)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"pvesim-api-{self.node}",
            daemon=True,
        )
        self._thread.start()

    def begin_stop(self) -> None:
        self._httpd.stopping.set()

    def stop(self) -> None:
        self._httpd.stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
        self._httpd.close_connections()


def _default_reachable(handler: ApiHandler) -> Callable[[str], bool]:
    probe = getattr(handler, "node_reachable", None)
    if probe is None:
        return lambda _node: True
    return lambda node: bool(probe(node))


class ClusterServer:
    """All nodes' listeners, started and stopped together."""

    def __init__(
        self,
        handler: ApiHandler,
        pki: ClusterPki,
        node_names: list[str],
        reachable: Callable[[str], bool] | None = None,
    ) -> None:
        missing = [n for n in node_names if n not in pki.nodes]
        if missing:
            raise ValueError(f"no certificate for node(s) {', '.join(missing)}")
        self.nodes = {
            name: NodeServer(name, handler, pki.nodes[name], reachable) for name in node_names
        }

    def start(self) -> None:
        for server in self.nodes.values():
            server.start()

    def stop(self) -> None:
        # Tell every listener first, so held connections of all nodes end together.
        for server in self.nodes.values():
            server.begin_stop()
        for server in self.nodes.values():
            server.stop()

    def urls(self) -> dict[str, str]:
        return {name: server.url for name, server in self.nodes.items()}

    def __enter__(self) -> ClusterServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
