"""The one error type for mistakes a user can fix.

Functions raise `UserError` for bad input (a missing file, a wrong option, a damaged
checkpoint); the CLI prints its message as one line and exits 2, the server answers 400. Bugs
keep raising ordinary exceptions so they still show a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in what the user asked for, with a message that names the fix.

    `param` is set when one parameter is at fault; the message then starts with its Python
    name (`top_k must be ...`), which the CLI replaces by the flag (`--top-k must be ...`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param

    def __reduce__(self):  # keep `param` when a worker process sends the error back
        return type(self), (str(self), self.param)


def bad_param(param: str, problem: str) -> UserError:
    """`UserError(f"{param} {problem}", param)`, e.g. bad_param("top_k", "must be at least 1, got 0")."""
    return UserError(f"{param} {problem}", param=param)


def shown(value: object, limit: int = 60) -> str:
    """`value`'s repr as an error message shows it: on one line (a DataFrame's spans many), cut
    at `limit` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def wrong_kind(param: str, value: object, wanted: str, fix: str = "") -> UserError:
    """The UserError for a Python argument of the wrong kind, naming what came and how to make
    the right one, e.g. wrong_kind("loaded", "runs/x", "a loaded model", "load_model('runs/x')")."""
    return bad_param(param, f"must be {wanted}, got {type(value).__name__} {shown(value)}" + (f": {fix}" if fix else ""))
