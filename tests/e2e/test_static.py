"""The port serves the browser client: every file under wschat/static/."""

from __future__ import annotations

import urllib.request

import pytest

from wschat.web import static_dir

from .process import ServerProcess

pytestmark = pytest.mark.e2e


def test_every_static_file_is_served(server: ServerProcess) -> None:
    """GET / is index.html and each file in wschat/static/ comes back byte for byte."""
    with urllib.request.urlopen(f"{server.http_url}/", timeout=5) as resp:
        assert resp.status == 200
        assert resp.read() == (static_dir() / "index.html").read_bytes()
    files = [p for p in static_dir().iterdir() if p.is_file()]
    assert files
    for path in files:
        with urllib.request.urlopen(f"{server.http_url}/{path.name}", timeout=5) as resp:
            assert resp.read() == path.read_bytes(), path.name
