"""What an operator sets for the WebSocket server; defaults are the production values."""

from __future__ import annotations

from dataclasses import dataclass

from wschat.chat.identity import AuthMode
from wschat.server.http import REQUEST_TIMEOUT_S
from wschat.server.tokens import TokenVerifier


@dataclass(frozen=True, slots=True)
class WsSettings:
    """WebSocket-level settings; defaults are the production values (see docs/deployment.md)."""

    max_message_bytes: int = 65536
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 5.0
    open_handshake_timeout_s: float = 10.0
    # A whole HTTP request, head and body, must arrive within this long.
    request_timeout_s: float = REQUEST_TIMEOUT_S
    close_handshake_timeout_s: float = 5.0
    max_output_bytes: int = 1024 * 1024
    # What a connection's welcomes may weigh, as sent: a welcome beyond the burst leaves a
    # debt, and the connection is not read until it is paid back at the rate. The burst
    # covers a client rejoining --max-rooms (32) rooms of ordinary history at once (about
    # 40 KB each: 100 messages of 200 bytes and 1,000 names); a flood of joins of a room
    # with a 1 MiB history is served one welcome every 4 s.
    welcome_rate_bytes_per_s: int = 256 * 1024
    welcome_burst_bytes: int = 2 * 1024 * 1024
    # Empty: only pages served from the request's own host may connect.
    allowed_origins: tuple[str, ...] = ()
    # Empty: any Host; else the others are answered 421 (against DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    max_connections: int = 0
    # 0: no limit. Many people can share one address (NAT), so this is generous.
    max_connections_per_ip: int = 256
    trusted_proxies: int = 0


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Signed identities: --auth, the verifier of the --jwt-* options, and --jwt-grace."""

    mode: AuthMode = AuthMode.OFF
    verifier: TokenVerifier | None = None
    # A connection whose token expired is closed (4440) this long after `exp` (+ leeway)
    # unless a `refresh` came: long enough for a client that woke from sleep to fetch one.
    grace_s: float = 25.0
    # What a connection may send while its `auth` waits for the JWKS (up to its fetch
    # timeout): held in memory, so bounded; beyond either, the connection is closed 1008.
    max_held_frames: int = 100
    max_held_bytes: int = 1024 * 1024
