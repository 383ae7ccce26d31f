"""The HTTP app: FastAPI routes over `OpenAIService`, a guard for keys and body sizes, and the
playground page (`run.run_server` serves it with uvicorn).

    app = create_app("runs/first")   # serve with uvicorn; `run.run_server` does, on 127.0.0.1:8000

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions
(`stream: true` answers with server-sent events), GET / (static/playground.html, which makes
no requests outside this server). Errors are JSON in OpenAI's shape; FastAPI's 422 becomes 400.
A guard checks the Host header (when given the names to accept), the key and the body size
before any route. docs/serving.md lists the fields, limits and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generation.cpu_decode import CpuDecoder
from ..generation.engine import Engine
from ..runfolder import Which, load_model
from .schemas import APIError, ChatRequest, CompletionRequest, ServerLimits, error_body
from .service import OpenAIService


def error_response(exc: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error in OpenAI's shape. A 408 (a generation past the time-out) says not to retry:
    OpenAI's clients retry a 408 twice by default, tripling the work of a request that cannot
    finish in time; they read `x-should-retry`."""
    headers = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}),
               **({"x-should-retry": "false"} if exc.status == 408 else {})}
    return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status,
                        headers=headers or None)


# ---- Host, auth and size limit (a plain ASGI middleware: it sees the raw body) ------------
class _BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body is larger than {max_bytes} bytes")


_HOST_HEADER = re.compile(r"\[(?P<ip6>[0-9a-f:.]+)\](:\d+)?|(?P<name>[^:\[\]/@\s]+)(:\d+)?", re.IGNORECASE)


def _ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class HostCheck:
    """Which Host headers name this server: a name in `allowed` ('*': any), the address the
    connection arrived at, and localhost or a loopback address when it arrived on loopback.
    Anything else (a DNS-rebinding page's own name) is refused."""

    def __init__(self, allowed: Iterable[str]):
        names = {h.lower().removeprefix("[").removesuffix("]").rstrip(".") for h in allowed}
        self.any = "*" in names
        self.names, self.ips = names, {ip for ip in map(_ip, names) if ip is not None}

    def __call__(self, header: bytes, server: tuple | None) -> bool:
        """Whether `header` (a Host header's value) is accepted on a connection to `server` (host, port)."""
        found = _HOST_HEADER.fullmatch(header.decode("latin-1").strip())
        if self.any or found is None:
            return self.any
        name = (found["ip6"] or found["name"]).lower().rstrip(".")
        ip, local = _ip(name), _ip(server[0]) if server else None
        local = getattr(local, "ipv4_mapped", None) or local  # an IPv4 client of a dual-stack '::' socket
        if name in self.names or (ip is not None and (ip in self.ips or ip == local)):
            return True
        return local is not None and local.is_loopback and (name == "localhost" or (ip is not None and ip.is_loopback))


class GuardMiddleware:
    """400 for a Host header that does not name this server (with `allowed_hosts`: `HostCheck`;
    without, any Host passes); 401 for /v1 requests without the bearer key (when one is set);
    413 for a body over `max_bytes`, by its Content-Length or by counting a chunked body as it
    is read."""

    def __init__(self, app, max_bytes: int, api_key: str | None, allowed_hosts: Iterable[str] | None = None):
        self.app, self.max_bytes, self.api_key = app, max_bytes, api_key
        self.host_ok = None if allowed_hosts is None else HostCheck(allowed_hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.host_ok is not None:
            hosts = [v for k, v in scope.get("headers", []) if k == b"host"]
            if len(hosts) != 1 or not self.host_ok(hosts[0], scope.get("server")):
                return await self._wrong_host(hosts, scope, receive, send)
        headers = dict(scope.get("headers", []))
        if self.api_key is not None and scope.get("path", "").startswith("/v1"):
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return await error_response(APIError(
                    401, "missing or wrong API key (send Authorization: Bearer KEY)",
                    type="authentication_error", code="invalid_api_key"))(scope, receive, send)
        try:
            too_big = int(headers.get(b"content-length", b"0")) > self.max_bytes
        except ValueError:
            too_big = False
        if too_big:
            return await self._reject(scope, receive, send)
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _wrong_host(self, hosts: list[bytes], scope, receive, send):
        if len(hosts) != 1:
            message = f"the request has {len(hosts)} Host headers; send one, naming this server"
        else:
            shown = hosts[0].decode("latin-1")[:100]
            name = _HOST_HEADER.fullmatch(shown.strip())
            fix = f"start the server with --allowed-host {name['ip6'] or name['name']} to accept it" if name \
                else "send one Host header naming this server"
            message = f"Host {shown!r} does not name this server; {fix}"
        await error_response(APIError(400, message, code="invalid_host"))(scope, receive, send)

    async def _reject(self, scope, receive, send):
        await error_response(APIError(413, f"request body is larger than {self.max_bytes} bytes",
                                       code="request_too_large"))(scope, receive, send)


class BusyGuard:
    """At most `max_requests` POST requests (the ones that generate) answered at once (a stream
    counts until it ends); one more is answered 503 in OpenAI's shape with Retry-After, at once,
    and its connection stays open for the retry. Counting requests, not open connections,
    refuses only the excess of a burst: every client of a burst has connected before the first
    request is read. GET and HEAD (/health, /v1/models, the playground) always pass: a health
    check of a busy server must not read as a dead one."""

    def __init__(self, app, max_requests: int):
        self.app, self.max_requests, self.active = app, max_requests, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        if self.active >= self.max_requests:
            response = error_response(APIError(
                503, f"the server is answering {self.max_requests} requests already (its --max-connections); "
                     "retry in a moment", type="server_error", code="server_busy"))
            response.headers["Retry-After"] = "1"
            return await response(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


# ---- the app -------------------------------------------------------------------------------
def _validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 as OpenAI's 400, naming the field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON", code="invalid_json")
    param = ".".join(loc) or None
    if param is None:  # the body itself: missing, or not an object
        return APIError(400, "the request body must be a JSON object (Content-Type: application/json)",
                        code="invalid_type")
    tag = next((i for i, p in enumerate(loc) if i and loc[i - 1] in _SHAPES and _UNION_TAG.fullmatch(p)), None)
    if tag is not None:  # a field of several shapes: pydantic names the one it tried ("prompt.str"), not the field
        param = ".".join(loc[:tag])
        shapes = _SHAPES.get(param.rsplit(".", 1)[-1], "a value of another type")
        return APIError(400, f"{param} must be {shapes}", param=param, code="invalid_type")
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid request")
    return APIError(400, message, param=param, code="invalid_type" if "type" in first.get("type", "") else "invalid_value")


# pydantic's name for one member of a union in an error's location ("str", "list[int]")
_UNION_TAG = re.compile(r"str|int|float|bool|list\[.*\]|dict\[.*\]")
_SHAPES = {"prompt": "text, a list of texts, token ids (a list of whole numbers) or a list of token-id lists",
           "stop": "text or a list of texts", "content": "text or a list of content parts"}


def _http_api_error(request: Request, exc: StarletteHTTPException) -> APIError:
    """Starlette's and FastAPI's own errors in OpenAI's shape (whose type for them all is
    invalid_request_error), with what to do instead."""
    route = f"{request.method} {request.url.path}"
    message = {404: f"{route} is not a route of this server; it answers POST /v1/completions, "
                    "POST /v1/chat/completions, GET /v1/models, GET /health and GET / (docs/serving.md)",
               405: f"{route}: the method is not allowed here (see docs/serving.md)",
               400: "the request body could not be read: it must be JSON in UTF-8 (Content-Type: application/json)",
               }.get(exc.status_code, str(exc.detail))
    code = {413: "request_too_large", 400: "invalid_json"}.get(exc.status_code)
    return APIError(exc.status_code, message, code=code)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        error = _validation_error(exc)
        sent = request.headers.get("content-type", "")
        if error.param is None and request.method == "POST" and not sent.startswith("application/json"):
            error = APIError(400, f"the request's Content-Type is {sent or 'missing'!r}; send the JSON body with "
                                  "Content-Type: application/json", code="invalid_content_type")
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error_response(_http_api_error(request, exc), exc.headers)  # 405's Allow


async def _answer(result):
    """A response body as JSON, or server-sent events as a stream. The JSON is written in a
    thread: an echoed prompt's logprobs run to megabytes, seconds the other streams would wait."""
    if isinstance(result, dict):
        return await asyncio.to_thread(lambda: JSONResponse(jsonable_encoder(result)))
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(run_dir, api_key: str | None = None, model_name: str | None = None,
               limits: ServerLimits | None = None, which: Which = "best",
               allowed_hosts: Iterable[str] | None = None, device: str = "cpu",
               quantize: str = "none", max_requests: int | None = None) -> FastAPI:
    """The FastAPI app serving the model in `run_dir` on `device`, stored as `quantize` (load_model). With `allowed_hosts` (names; '*' for
    any) only requests whose Host header names this server pass (`HostCheck`; `run.run_server`
    always gives them); without, the Host header is not checked. With `max_requests`, requests
    beyond that many at once are answered 503 (`BusyGuard`). Raises UserError for an `api_key`
    no HTTP client could send."""
    from .run import check_api_key

    check_api_key(api_key)
    loaded = load_model(run_dir, which, device=device, quantize=quantize)
    if next(loaded.model.parameters()).device.type == "cpu":
        CpuDecoder.for_model(loaded.model)  # build the C decode step now, not in the first request
    service = OpenAIService(Engine(loaded.model, loaded.tokenizer), model_name or Path(run_dir).resolve().name,
                            limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.open()  # again, when an app is started after a stop (tests do)
        yield
        service.close()

    app = FastAPI(title="banglaslm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service
    app.state.served = f"{loaded.checkpoint.name}, iteration {loaded.iteration}"  # best falls back to latest
    app.add_middleware(GuardMiddleware, max_bytes=service.limits.max_body_bytes, api_key=api_key,
                       allowed_hosts=allowed_hosts)
    if max_requests is not None:  # added last, so it runs first: a refusal costs nothing else
        app.add_middleware(BusyGuard, max_requests=max_requests)
    _install_error_handlers(app)

    @app.head("/health")  # what health checkers send
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.model_id}

    @app.head("/v1/models")
    @app.get("/v1/models")
    async def models():
        return service.models()

    @app.head("/v1/models/{name}")
    @app.get("/v1/models/{name}")
    async def model_info(name: str):
        return service.model_info(name)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return await _answer(await service.completions(req, request.is_disconnected))

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        return await _answer(await service.chat_completions(req, request.is_disconnected))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():  # the playground has none: say so without a 404 in the log and the browser's console
        return Response(status_code=204)

    @app.head("/", response_class=HTMLResponse)
    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(_playground_html(), headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                       "style-src 'unsafe-inline'; connect-src 'self'"})

    return app


def _playground_html() -> str:
    from importlib import resources

    try:
        return resources.files("banglaslm").joinpath("server/static/playground.html").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return "<!doctype html><meta charset=utf-8><title>banglaslm</title><p>The playground page is not installed."
