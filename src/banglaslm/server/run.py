"""`banglaslm serve`: the server process (uvicorn), its options, and what bounds its exposure.

    run_server("runs/first")   # http://127.0.0.1:8000/v1 for any OpenAI client; / is the playground

Options are checked and the port is bound before the model loads, so a bad option or a port in
use is a one-line `UserError`. A connection must send a request's headers within
HEADER_TIMEOUT_S and its body within BODY_TIMEOUT_S or it is closed (slow clients cannot hold
it open); beyond `max_connections` requests at once, requests are answered 503, and beyond
OPEN_PER_REQUEST times that many open connections, new ones are refused; the app refuses a
Host header that does not name this server (DNS rebinding, app.py). docs/serving.md has the
whole list. FastAPI and uvicorn are imported only when a server starts.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable
from typing import Annotated

from ..config import Opt
from ..errors import UserError, bad_param
from ..quantize import Quantize, check_quantize
from ..runfolder import Which, resolve_device
from .schemas import ServerLimits

HEADER_TIMEOUT_S = 10.0  # from connecting (or the end of the last answer) to the request's last header line
BODY_TIMEOUT_S = 30.0    # from the last header line to the end of the body (1 MB at 33 KB/s)
KEEP_ALIVE_S = 5         # an idle kept-alive connection closes after this (uvicorn's default)
GRACEFUL_S = 10          # at shutdown, responses still being sent this long after a signal are cut
OPEN_PER_REQUEST = 4     # open connections (idle, slow, waiting) allowed per request answered at once
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?", re.IGNORECASE)  # a DNS name (RFC 1123; '_' too)


def run_server(
    run_dir,
    host: Annotated[str, Opt("bind address; 127.0.0.1 is reachable from this machine only, 0.0.0.0 from "
                             "every network this machine is on")] = "127.0.0.1",
    port: Annotated[int, Opt("TCP port (1-65535)")] = 8000,
    api_key: Annotated[str | None, Opt("require 'Authorization: Bearer KEY' on /v1/* (printable ASCII, "
                                       "no spaces)")] = None,
    allowed_hosts: Annotated[list[str], Opt(  # the list default is never mutated
        "also accept requests whose Host header is this name (repeatable; '*' accepts any); the bound "
        "address and, on loopback, localhost are always accepted")] = [],  # noqa: B006
    max_connections: Annotated[int, Opt("generating requests answered at once (one per connection; /health and "
                                        "other GETs always pass); more at the same moment are answered 503 with Retry-After, and open connections "
                                        f"beyond {OPEN_PER_REQUEST}x this are refused")] = 64,
    device: Annotated[str, Opt("where the model runs: cpu, cuda, cuda:N or auto (cuda when there is one)")] = "cpu",
    quantize: Quantize = "none", which: Which = "best",
    model_name: str | None = None, limits: ServerLimits | None = None, log_level: str = "info",
) -> None:
    """Serve `run_dir` with uvicorn until interrupted (loopback only unless `host` says otherwise).
    Raises UserError for a bad option, a host that is not this machine's, or a port in use,
    before the model is loaded."""
    check_options(host, port, api_key, allowed_hosts, max_connections)
    check_quantize(quantize, resolve_device(device, "device"))
    sockets = bind(host, port)
    try:
        from .app import create_app

        app = create_app(run_dir, api_key=api_key, model_name=model_name, limits=limits,
                         allowed_hosts=trusted_hosts(host, allowed_hosts), device=device,
                         quantize=quantize, max_requests=max_connections, which=which)
        config = server_config(app, host, port, max_connections=max_connections, log_level=log_level)
        log = logging.getLogger("uvicorn.error")  # configured by uvicorn.Config
        if api_key is None and not all(_is_loopback(s.getsockname()[0]) for s in sockets):
            log.warning("serving on %s without an API key: anyone who can reach this machine can use the "
                        "model (set --api-key KEY)", host)
        log.info("serving %s (%s) on %s (OpenAI API under /v1; Ctrl-C stops)", run_dir, app.state.served,
                 url(host, port))
        log.info("%s", threads_note())
        _stopping_server(config, app.state.service.close).run(sockets=sockets)
    finally:
        for s in sockets:
            s.close()


# ---- options -------------------------------------------------------------------------------
def check_options(host: str, port: int, api_key: str | None, allowed_hosts: list[str],
                  max_connections: int) -> None:
    """Raise UserError (naming the parameter) for a value the server cannot use."""
    if not 1 <= port <= 65535:
        raise bad_param("port", f"must be in 1..65535, got {port}")
    if not _is_host(host):
        raise bad_param("host", f"must be an IP address or a host name (no scheme, port or path), got {host!r}; "
                                "127.0.0.1 serves this machine only, 0.0.0.0 every network")
    check_api_key(api_key)
    for name in allowed_hosts:
        if name != "*" and not _is_host(name.removeprefix("[").removesuffix("]")):
            raise bad_param("allowed_hosts", f"must be host names or IP addresses without a port (or '*'), "
                                             f"got {name!r}")
    if max_connections < 1:
        raise bad_param("max_connections", f"must be at least 1, got {max_connections}")


def check_api_key(api_key: str | None) -> None:
    """Raise UserError unless `api_key` is None or can travel in an HTTP header and match:
    visible ASCII (33-126), at least one character. The key itself is never shown."""
    if api_key is None:
        return
    if not api_key:
        raise bad_param("api_key", "is empty; give a key of visible ASCII characters, or none for an open server")
    bad = next((i for i, c in enumerate(api_key) if not "!" <= c <= "~"), None)
    if bad is not None:
        raise bad_param("api_key", f"has a character HTTP headers cannot carry (a space, a control or a non-ASCII "
                                   f"character) at position {bad + 1}, so no client could send it; use visible "
                                   "ASCII only")


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return _NAME.fullmatch(text) is not None and not text.replace(".", "").isdigit()


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return address.lower() == "localhost"


def trusted_hosts(host: str, allowed_hosts: list[str]) -> list[str]:
    """The Host header names the app accepts besides the address a connection arrives at (and,
    on loopback, localhost): `allowed_hosts`, and `host` unless it is a wildcard address."""
    wildcard = host in ("0.0.0.0", "::")
    return [*allowed_hosts, *([] if wildcard else [host])]


def threads_note() -> str:
    """The CPU threads generation uses (torch's, which the C kernel follows), and the wait policy."""
    import torch

    policy = os.environ.get("OMP_WAIT_POLICY")
    advice = f"OMP_WAIT_POLICY={policy}" if policy else \
        "idle threads spin a while before sleeping; beside other busy processes start with OMP_WAIT_POLICY=passive"
    return f"generating with {torch.get_num_threads()} CPU threads; {advice}"


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


# ---- the listening sockets -----------------------------------------------------------------
def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of `host` (a name may have an IPv4 and an IPv6 one).
    Raises UserError when the name does not resolve, the address is not this machine's, the
    port needs privileges, or the port is in use."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise bad_param("host", f"{host!r} does not resolve to an address ({e.strerror}); give an IP address "
                                "of this machine, 127.0.0.1 or 0.0.0.0") from None
    sockets, errors = [], []
    for family, kind, proto, _, address in dict.fromkeys(infos):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart at once
            if family == socket.AF_INET6:  # '::' alone serves IPv4 too (dual stack), as uvicorn's does
                v4_too = address[0] == "::" and not any(info[0] == socket.AF_INET for info in infos)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if v4_too else 1)
            sock.bind(address)
            sock.listen(2048)
            sockets.append(sock)
        except OSError as e:
            sock.close()
            errors.append(e)
    # An address this machine lacks (a name's IPv6 address without IPv6) is skipped if another binds.
    fatal = [e for e in errors if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)]
    if fatal or not sockets:
        for s in sockets:
            s.close()
        raise _bind_error(host, port, (fatal or errors)[0])
    return sockets


def _bind_error(host: str, port: int, e: OSError) -> UserError:
    if e.errno == errno.EADDRINUSE:
        return bad_param("port", f"{port} is already in use on {host}; stop the program listening there or "
                                 "choose another `port`")
    if e.errno == errno.EACCES:
        return bad_param("port", f"{port} needs administrator rights here (ports below 1024 usually do); "
                                 "choose a `port` above 1023")
    if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return bad_param("host", f"{host} is not an address of this machine; give one of its addresses, "
                                 "127.0.0.1 (this machine only) or 0.0.0.0 (every network)")
    return UserError(f"cannot listen on {host} port {port}: {e.strerror or e}")


# ---- uvicorn -------------------------------------------------------------------------------
def _stopping_server(config, stop: Callable[[], None]):
    """uvicorn's server, which on SIGINT/SIGTERM also calls `stop` at once (the service ends every
    generation). uvicorn alone waits for open connections before its app's shutdown, so a long
    stream would hold it for as long as it generates."""
    import uvicorn

    server = uvicorn.Server(config)
    exit_as_uvicorn = server.handle_exit

    def handle_exit(sig, frame) -> None:
        stop()
        if server.should_exit:  # a second signal changes nothing: the stop is under way and bounded
            return  # (GRACEFUL_S); uvicorn's forced exit cut the app's shutdown and logged a traceback
        exit_as_uvicorn(sig, frame)

    server.handle_exit = handle_exit  # what uvicorn installs as the signal handler
    logging.getLogger("uvicorn.error").addFilter(_one_line_for_cut_responses)
    return server


def _one_line_for_cut_responses(record: logging.LogRecord) -> bool:
    """uvicorn logs every response it cuts at the end of the graceful shutdown (GRACEFUL_S; a
    stream whose client stopped reading) as "Exception in ASGI application" with the
    CancelledError's traceback, which reads as a crash: one line says what happened."""
    if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
        record.msg, record.args, record.exc_info, record.exc_text = (
            "cut a response still being sent at shutdown (its client was not reading it)", (), None, None)
    return True


def server_config(app, host: str = "127.0.0.1", port: int = 8000, max_connections: int = 64,
                  header_timeout_s: float = HEADER_TIMEOUT_S, body_timeout_s: float = BODY_TIMEOUT_S,
                  log_level: str = "info"):
    """uvicorn's settings for `app`: requests read within the time-outs (seconds, `timed_protocol`),
    at most OPEN_PER_REQUEST x `max_connections` connections open (uvicorn's limit_concurrency
    counts the connection asking, hence the + 1; beyond it uvicorn answers 503 and closes). The
    app itself (`create_app(max_requests=...)`) answers at most `max_connections` at once."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          http=timed_protocol(header_timeout_s, body_timeout_s),
                          limit_concurrency=OPEN_PER_REQUEST * max_connections + 1, timeout_keep_alive=KEEP_ALIVE_S,
                          timeout_graceful_shutdown=GRACEFUL_S)


@functools.cache
def timed_protocol(header_timeout_s: float, body_timeout_s: float) -> type:
    """uvicorn's h11 protocol with read deadlines (uvicorn has none): a connection is closed when
    a request's headers are not complete `header_timeout_s` seconds after the server began
    waiting for them, or its body `body_timeout_s` after the headers. Data that trickles in does
    not extend a deadline; answering a request is not bounded here (the app's time-out is)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    limits = {h11.IDLE: ("headers", header_timeout_s), h11.SEND_BODY: ("body", body_timeout_s)}

    class TimedH11Protocol(H11Protocol):
        _phase: str | None = None
        _timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()  # kept alive: the next request's headers are due

        def connection_lost(self, exc) -> None:
            self._arm(None, 0)
            super().connection_lost(exc)

        def _watch(self) -> None:
            """Start the deadline of the part of a request now awaited, if it changed."""
            phase, seconds = limits.get(self.conn.their_state, (None, 0))
            if phase != self._phase:
                self._arm(phase, seconds)

        def _arm(self, phase: str | None, seconds: float) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._phase = phase
            self._timer = None if phase is None else self.loop.call_later(seconds, self._expire)

        def _expire(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.logger.info("closed a connection whose request %s did not arrive in time", self._phase)
                self.transport.close()

    return TimedH11Protocol
