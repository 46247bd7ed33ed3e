"""The server API of a real wschat process, over HTTP: a server with the API on, and a call."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .conftest import ServerFactory
from .process import ServerProcess, free_port

KEY = "e2e-api-key-" + "0123456789abcdef" * 2


def api_server(
    wschat_server: ServerFactory, tmp_path: Path, *extra: str
) -> tuple[ServerProcess, str]:
    """A server with the API on another 127.0.0.1 port; returns it and the API's base URL."""
    keys = tmp_path / "api.keys"
    keys.write_text(KEY + "\n")
    port = free_port()
    server = wschat_server(
        "--api-listen", f"tcp:{port}:interface=127.0.0.1", "--api-key-file", str(keys), *extra
    )
    return server, f"http://127.0.0.1:{port}"


def call(
    base: str, method: str, path: str, body: object = None, key: str = KEY
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("authorization", f"Bearer {key}")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
