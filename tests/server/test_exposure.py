"""The server bound beyond loopback: read time-outs, the connection cap and the Host check over
real loopback sockets (uvicorn with `run.server_config`, as `run_server` uses it), and the
checks `banglaslm serve` makes of its options before loading anything."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import uvicorn
from conftest import assert_user_error, cli

from banglaslm.errors import UserError
from banglaslm.server.app import BusyGuard, HostCheck, create_app
from banglaslm.server.run import (
    OPEN_PER_REQUEST,
    bind,
    run_server,
    server_config,
    trusted_hosts,
)
from banglaslm.tokenizer import Tokenizer


@contextlib.contextmanager
def serving(run_dir, allowed_hosts=(), **settings):
    """The port of a uvicorn server (in a thread) for a fresh app on `run_dir`, with `settings`
    passed to `server_config`."""
    app = create_app(run_dir, allowed_hosts=allowed_hosts)
    [sock] = bind("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app, log_level="warning", **settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def get(port: int, path: str = "/health", host: str | None = None, method: str = "GET", body: bytes | None = None):
    """(status, body) of one request on a new connection, with `host` as the Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        if body is not None:
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def seconds_until_closed(sock: socket.socket, trickle: bytes | None, limit: float = 15.0) -> float:
    """Seconds until the server closes `sock` (asserting it answered nothing), sending `trickle`
    every 0.2 s meanwhile (None: silence)."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < limit:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            if trickle is not None:
                try:
                    sock.sendall(trickle)
                except OSError:  # closed between the recv and the send
                    return time.monotonic() - start
            continue
        except ConnectionResetError:
            return time.monotonic() - start
        assert data == b"", data  # no answer, just the end of the connection
        return time.monotonic() - start
    raise AssertionError(f"the connection was still open after {limit} s")


# ---- read time-outs and the connection cap --------------------------------------------------

def test_silent_and_half_sent_headers_are_closed_at_the_header_deadline(trained_run):
    with serving(trained_run, header_timeout_s=1.0, body_timeout_s=60.0) as port:
        silent = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        waits = []
        threads = [threading.Thread(target=lambda s=s, t=t: waits.append(seconds_until_closed(s, t)))
                   for s, t in ((silent, None), (slow, b"a"))]  # the trickle does not extend the deadline
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(waits) == 2 and all(0.8 < w < 5.0 for w in waits), waits
        assert get(port)[0] == 200  # the server goes on


def test_a_trickled_body_is_closed_at_the_body_deadline(trained_run):
    with serving(trained_run, header_timeout_s=60.0, body_timeout_s=1.0) as port:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"prompt\": \"")
        assert 0.8 < seconds_until_closed(slow, b"x") < 5.0
        body = json.dumps({"prompt": "আমার", "max_tokens": 3}).encode()
        assert get(port, "/v1/completions", method="POST", body=body)[0] == 200


def test_open_connections_beyond_the_cap_get_503_until_slots_free(trained_run):
    """Idle and slow connections are bounded too: OPEN_PER_REQUEST per request slot."""
    with serving(trained_run, max_connections=1, header_timeout_s=3.0) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(OPEN_PER_REQUEST)]  # slow clients
        deadline = time.monotonic() + 2.0
        status = get(port)[0]
        while status != 503 and time.monotonic() < deadline:  # until the server has accepted them all
            time.sleep(0.05)
            status = get(port)[0]
        assert status == 503
        for s in held:  # the header time-out frees their places
            seconds_until_closed(s, None)
        assert get(port)[0] == 200


def test_a_burst_over_the_request_cap_loses_only_its_excess(trained_run):
    """12 clients connect at once and each asks for a completion, 8 answered at a time: at most
    the 4 over the cap are refused, with OpenAI's JSON and Retry-After (counting open connections,
    as uvicorn's own limit does, refused nearly all of a burst: every client has connected before
    the first request is read)."""
    app = create_app(trained_run, max_requests=8)
    [sock] = bind("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app, log_level="warning", max_connections=8))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port, barrier, results = sock.getsockname()[1], threading.Barrier(12), []
    body = json.dumps({"prompt": "আমার", "max_tokens": 40, "temperature": 0}).encode()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.connect()
        barrier.wait()
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        results.append((response.status, response.getheader("Retry-After"), response.read()))

    try:
        threads = [threading.Thread(target=client) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    refused = [(retry, json.loads(raw)["error"]) for status, retry, raw in results if status == 503]
    assert len(results) == 12 and all(status in (200, 503) for status, _, _ in results)
    assert len(refused) <= 4, [status for status, _, _ in results]
    assert all(retry == "1" and error["code"] == "server_busy" for retry, error in refused)


def test_busy_guard_answers_the_request_over_its_cap_503_and_frees_places():
    """Two requests held open by the app, a third refused at once (but health checks, the models
    and the playground pass: they were refused too); when one ends, a fourth passes."""
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        if scope["method"] == "POST":  # generating; GET answers at once
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(app, method="POST", path="/v1/completions"):
        sent = []
        async def send(message):
            sent.append(message)
        await app({"type": "http", "method": method, "path": path, "headers": []}, None, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    async def scenario():
        guard = BusyGuard(slow_app, max_requests=2)
        held = [asyncio.create_task(call(guard)) for _ in range(2)]
        await asyncio.sleep(0)
        status, headers = await call(guard)
        assert status == 503 and headers[b"retry-after"] == b"1" and guard.active == 2
        for method, path in (("GET", "/health"), ("HEAD", "/health"), ("GET", "/v1/models"), ("GET", "/")):
            assert (await call(guard, method, path))[0] == 200, path  # a busy server is not a dead one
        release.set()
        assert [(await t)[0] for t in held] == [200, 200] and guard.active == 0
        assert (await call(guard))[0] == 200

    asyncio.run(scenario())


# ---- the Host header ------------------------------------------------------------------------

def test_host_header_must_name_this_server(trained_run):
    with serving(trained_run, allowed_hosts=["api.example"]) as port:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "api.example",
                     f"API.Example.:{port}"):
            assert get(port, host=host)[0] == 200, host
        for host, path in (("evil.example", "/health"), (f"evil.example:{port}", "/v1/models"),
                           ("api.example.evil.example", "/"), ("127.0.0.1@evil.example", "/health")):
            status, body = get(port, path, host=host)
            assert status == 400, host
            error = json.loads(body)["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_host"
            assert repr(host) in error["message"], error
        assert "--allowed-host evil.example" in json.loads(get(port, host="evil.example")[1])["error"]["message"]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # HTTP/1.0 needs no Host
            sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            answer = b"".join(iter(lambda: sock.recv(4096), b""))
        assert b" 400 " in answer.split(b"\r\n")[0] and b"the request has 0 Host headers; send one" in answer, answer
        body = json.dumps({"prompt": "আমার", "max_tokens": 3}).encode()
        assert get(port, "/v1/completions", host="evil.example", method="POST", body=body)[0] == 400


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 here")
def test_serving_on_the_ipv6_wildcard_serves_ipv4_too():
    """--host :: listened on IPv6 alone: 127.0.0.1 was refused (uvicorn's '::' is dual stack)."""
    try:
        [sock] = bind("::", 0)
    except Exception as exc:  # a machine without an IPv6 stack
        pytest.skip(f"cannot bind '::' here: {exc}")
    with sock, socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=5):
        pass
    [local] = bind("::1", 0)  # an IPv6 address of its own stays IPv6 only
    with local:
        assert local.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    # an IPv4 client arrives at '::ffff:127.0.0.1': its Host header names the server as 127.0.0.1 or localhost
    check = HostCheck(trusted_hosts("::", []))
    for host in (b"127.0.0.1:8000", b"localhost:8000"):
        assert check(host, ("::ffff:127.0.0.1", 8000)), host
    assert check(b"192.0.2.7:8000", ("::ffff:192.0.2.7", 8000)) and not check(b"evil.example", ("::ffff:192.0.2.7", 8000))


def test_host_check_rules():
    check = HostCheck(["api.example", "[2001:db8::1]"])
    lan, loopback = ("192.168.1.5", 8000), ("127.0.0.1", 8000)
    assert check(b"192.168.1.5:8000", lan) and check(b"api.example", lan) and check(b"[2001:db8::1]:80", lan)
    assert not check(b"localhost:8000", lan) and not check(b"127.0.0.1", lan)  # not on loopback: not this server
    assert not check(b"10.0.0.1", lan) and not check(b"", lan) and not check(b"a b", lan)
    assert check(b"localhost", loopback) and check(b"127.0.0.1:8000", loopback)
    assert not check(b"rebind.example", loopback)
    assert HostCheck(["*"])(b"anything.example", lan)


# ---- options ---------------------------------------------------------------------------------

def test_options_are_checked_before_the_model_loads(tmp_path, trained_run):
    missing = tmp_path / "no-run"  # the run folder is never reached
    for kwargs, param in (({"port": 70000}, "port"), ({"port": 0}, "port"), ({"api_key": "কী"}, "api_key"),
                          ({"api_key": "two words"}, "api_key"), ({"api_key": ""}, "api_key"),
                          ({"host": "http://example.com"}, "host"), ({"host": "127.0.0.1:80"}, "host"),
                          ({"allowed_hosts": ["example.com:80"]}, "allowed_hosts"),
                          ({"max_connections": 0}, "max_connections")):
        with pytest.raises(UserError) as caught:
            run_server(missing, **kwargs)
        assert caught.value.param == param and str(caught.value).startswith(param), kwargs
    with pytest.raises(UserError, match="api_key"):
        create_app(trained_run, api_key="key\n")


@pytest.mark.parametrize("args, fragment", [
    (["--port", "70000"], "--port must be in 1..65535, got 70000"),
    (["--api-key", "চাবি"], "--api-key has a character HTTP headers cannot carry"),
    (["--host", "no such host!"], "--host must be an IP address or a host name"),
    (["--host", "name.invalid"], "--host 'name.invalid' does not resolve"),
    (["--allowed-host", "example.com:8000"], "--allowed-host must be host names"),
    (["--max-connections", "0"], "--max-connections must be at least 1"),
    (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    pytest.param(["--device", "cuda"], "--device is cuda but no CUDA GPU is available",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")),
])
def test_serve_refuses_bad_options_in_one_line(trained_run, args, fragment):
    assert_user_error(cli("serve", trained_run, *args), fragment)


def test_serve_on_a_port_in_use_is_one_line(trained_run):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert_user_error(cli("serve", trained_run, "--port", port), f"--port {port} is already in use")


def start_serve(run, *args) -> tuple[subprocess.Popen, int]:
    """`banglaslm serve RUN ARGS` in a process of its own, once it answers: (process, port)."""
    [probe] = bind("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen([sys.executable, "-m", "banglaslm", "serve", str(run), "--port", str(port), *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    deadline = time.monotonic() + 60
    while True:
        try:
            assert get(port)[0] == 200
            return server, port
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise AssertionError(f"the server did not start: {server.communicate()[1]}") from None
            time.sleep(0.3)


def test_serve_on_every_network_checks_host_and_warns_without_a_key(trained_run):
    server, port = start_serve(trained_run, "--host", "0.0.0.0", "--allowed-host", "models.example")
    try:
        assert get(port, host="models.example")[0] == 200
        assert get(port, host="rebind.example")[0] == 400
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "without an API key" in err and "Traceback" not in err, err
    # how it generates: serve sets the passive wait policy itself when the environment has none
    assert "CPU threads; OMP_WAIT_POLICY=passive" in err


def test_serve_takes_the_checkpoint_to_serve(monkeypatch, trained_run):
    """`serve --checkpoint latest` reaches the app (chat and export had it; serve served "best" only)."""
    import banglaslm.server.app as app_module

    seen = {}

    def spy(run_dir, **kwargs):
        seen.update(kwargs)
        raise UserError("stop here")

    monkeypatch.setattr(app_module, "create_app", spy)
    with socket.socket() as probe:  # a port free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError, match="stop here"):
        run_server(trained_run, port=port, which="latest")
    assert seen["which"] == "latest" and seen["max_requests"] == 64


def open_stream(port: int, body: dict) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    return response


def stream_events(response: http.client.HTTPResponse) -> list:
    """The rest of a stream's events: JSON payloads, then '[DONE]'."""
    return [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]"
            for line in response.read().decode("utf-8").splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("sig, times", [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGINT, 2)])
def test_a_signal_stops_the_server_at_once_and_ends_every_stream(trained_run, sig, times):
    """uvicorn waits for open connections before it stops the app: long streams kept the server
    generating long after Ctrl-C or SIGTERM. Now each stream ends with an error event and
    [DONE], the process exits in seconds, and nothing is cut mid-chunk. A second Ctrl-C (uvicorn's
    forced exit) logged a traceback from the app's cut shutdown."""
    server, port = start_serve(trained_run)
    eod = Tokenizer.from_file(trained_run / "tokenizer.json").eod_id
    long = {"prompt": "আমি", "max_tokens": 1024, "n": 8, "stream": True, "logit_bias": {str(eod): -100}}
    try:
        streams = [open_stream(port, long) for _ in range(4)]  # 32 choices: 16 decode, 16 wait
        assert streams[0].readline().startswith(b"data: ")
        server.send_signal(sig)
        started = time.monotonic()
        for _ in range(times - 1):
            time.sleep(0.05)
            server.send_signal(sig)
        events = [stream_events(s) for s in streams]
        _, err = server.communicate(timeout=30)
        seconds = time.monotonic() - started
    finally:
        server.kill()
    assert seconds < 15 and "Traceback" not in err, err
    for stream in events:
        assert stream[-1] == "[DONE]"
        assert stream[-2]["error"]["code"] == "server_shutdown", stream[-2]


def test_ctrl_c_pressed_on_while_the_stopped_server_exits_prints_no_traceback(trained_run):
    """After "Finished server process" the interpreter's exit takes a while (seconds on a busy
    machine); a Ctrl-C pressed meanwhile printed a KeyboardInterrupt traceback."""
    server, _ = start_serve(trained_run)
    try:
        server.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while server.poll() is None and time.monotonic() < deadline:  # pressed on and on until it is gone
            server.send_signal(signal.SIGINT)
            time.sleep(0.005)
        _, err = server.communicate(timeout=30)
    finally:
        server.kill()
    assert "Finished server process" in err and "Traceback" not in err, err


def test_a_response_cut_at_shutdown_is_one_line_not_a_traceback():
    """Streams whose clients stopped reading cannot take their last events: uvicorn cuts them when
    the graceful shutdown runs out (GRACEFUL_S) and logged each as "Exception in ASGI
    application" with a CancelledError traceback, as if the server had crashed. (Seen end to end
    with three clients that never read a 1024-token n=8 stream with 20 logprobs, then SIGINT:
    it needs ~25 s and a timing guess, too slow and loose for CI; the filter is tested here.)"""
    import asyncio
    import logging
    import sys

    from banglaslm.server.run import (
        _one_line_for_cut_responses,
        _stopping_server,
        server_config,
    )

    def logged(exc: BaseException) -> str:
        try:
            raise exc
        except BaseException:
            record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n",
                                       (), sys.exc_info())
        assert _one_line_for_cut_responses(record)
        return logging.Formatter().format(record)

    cut = logged(asyncio.CancelledError("Task cancelled, timeout graceful shutdown exceeded"))
    assert cut == "cut a response still being sent at shutdown (its client was not reading it)"
    bug = logged(RuntimeError("a real bug"))
    assert "Traceback" in bug and "RuntimeError: a real bug" in bug  # other failures keep their traceback
    _stopping_server(server_config(lambda scope, receive, send: None), lambda: None)
    assert _one_line_for_cut_responses in logging.getLogger("uvicorn.error").filters


def test_the_log_names_the_checkpoint_served(trained_run, tmp_path):
    """Without best.safetensors the default `best` served `latest` without a word."""
    import shutil

    from banglaslm.runfolder import load_model

    assert create_app(trained_run).state.served == f"best.safetensors, iteration {load_model(trained_run).iteration}"
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "best.safetensors").unlink()
    assert create_app(run).state.served.startswith("latest.safetensors, iteration ")
