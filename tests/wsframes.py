"""Just enough of RFC 6455 to play a client on an in-memory transport."""

from __future__ import annotations

import json
import struct
from typing import Any

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10
MASK = b"\x12\x34\x56\x78"


def handshake(
    origin: str | None = None, protocols: str | None = None, extensions: str | None = None
) -> bytes:
    lines = [
        "GET /ws HTTP/1.1",
        "Host: chat.example:8080",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    size = len(payload)
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + body


def text(obj: Any) -> bytes:
    return client_frame(OP_TEXT, json.dumps(obj).encode())


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames; returns (opcode, payload) pairs."""
    frames = []
    pos = 0
    while pos < len(data):
        opcode = data[pos] & 0x0F
        size = data[pos + 1] & 0x7F
        pos += 2
        if size == 126:
            (size,) = struct.unpack("!H", data[pos : pos + 2])
            pos += 2
        elif size == 127:
            (size,) = struct.unpack("!Q", data[pos : pos + 8])
            pos += 8
        frames.append((opcode, data[pos : pos + size]))
        pos += size
    return frames


def close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0])
