"""Peer 3: Python ``websockets`` (asyncio) with ``websockets.broadcast()``.

Usage: python peers/websockets_broadcast.py PORT
"""

import asyncio
import signal
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

CLIENTS: set[ServerConnection] = set()


async def handler(websocket: ServerConnection) -> None:
    CLIENTS.add(websocket)
    try:
        async for message in websocket:
            broadcast(CLIENTS, message)
    finally:
        CLIENTS.discard(websocket)


async def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port):
        print(f"websockets peer listening on 127.0.0.1:{port}", flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
