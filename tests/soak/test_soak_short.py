"""The soak in its short form for `make test`; `make soak` runs the long one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.abuse import run_async
from tests.e2e.process import ServerProcess

from .soak import SERVER_ARGS, Config, raise_fd_limit, soak

pytestmark = pytest.mark.e2e

CLIENTS = 100


def test_short_soak_every_view_equals_the_stored_history(tmp_path: Path) -> None:
    """100 clients chat for 20 s at 1 msg/s each over 10 rooms, dropping their connections
    every 5 s on average (clean close, TCP drop, or silent with a token takeover) and
    resuming with `since` and resent refs: every client's view of each room equals the
    stored history, and every acked message is stored once with its acked id."""
    raise_fd_limit(2 * CLIENTS + 256)
    server = ServerProcess(tmp_path, *SERVER_ARGS).start()
    try:
        config = Config(
            clients=CLIENTS, duration_s=20, rate_per_s=1, disconnect_every_s=5, ramp_up_s=3
        )
        report = run_async(soak(server.ws_url, config))
        print(report.summary())
        assert report.ok, report.summary()
        stats = report.stats
        # The run did exercise what it claims to.
        assert stats.acked > 1000
        assert min(stats.disconnects[how] for how in ("close", "drop", "ghost")) > 20
        assert stats.resent > 0
        assert server.log().count("by a reconnect with its token") > 20
        assert "Traceback" not in server.log()
    finally:
        server.kill()
