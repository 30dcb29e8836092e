"""The Ray dashboard's HTTP APIs (Jobs, Serve): its address, auth token and error messages."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def auth_headers() -> dict[str, str]:
    """The cluster's token as a bearer header, looked up where Ray itself looks for it.

    Ray's client only sends a token when this process has `RAY_AUTH_MODE=token`, which a plain
    shell lacks although `ray.init()` and `ray start` turn token auth on by default. So read it
    from `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`, as Ray does;
    `RAY_AUTH_MODE=disabled` sends none.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError:
            return {}
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def address_env_cleared() -> Iterator[None]:
    """Hide RAY_API_SERVER_ADDRESS / RAY_ADDRESS, which Ray lets override an explicit address."""
    saved = {key: os.environ.pop(key) for key in ADDRESS_ENV if key in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def describe(err: Exception, address: str) -> str:
    """One line for a failed Jobs API call."""
    if isinstance(err, ConnectionError):
        return (
            f"cannot reach a Ray cluster at {address}: is it running, and is this its dashboard "
            "address (default port 8265)?"
        )
    text = " ".join(str(err).split()) or type(err).__name__
    http = re.match(r"Request failed with status code (\d+): (.*?)\.*$", text)
    if http:
        text = http.group(2) if http.group(1) == "404" else f"HTTP {http.group(1)}: {http.group(2)}"
    return f"{text} ({address})"
