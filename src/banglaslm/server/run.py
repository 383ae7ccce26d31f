"""`banglaslm serve`: the server process (uvicorn), with its options.

    run_server("runs/first")   # http://127.0.0.1:8000/v1 for any OpenAI client; / is the playground

FastAPI and uvicorn are imported only when a server starts, so the command line stays quick.
"""

from __future__ import annotations

from typing import Annotated

from ..config import Opt
from .schemas import ServerLimits


def run_server(
    run_dir,
    host: Annotated[str, Opt("bind address; 127.0.0.1 is reachable from this machine only")] = "127.0.0.1",
    port: Annotated[int, Opt("TCP port")] = 8000,
    api_key: Annotated[str | None, Opt("require 'Authorization: Bearer KEY' on /v1/*")] = None,
    model_name: str | None = None, limits: ServerLimits | None = None, log_level: str = "info",
) -> None:
    """Serve `run_dir` with uvicorn until interrupted (loopback only unless `host` says otherwise)."""
    import uvicorn

    from .app import create_app

    app = create_app(run_dir, api_key=api_key, model_name=model_name, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
