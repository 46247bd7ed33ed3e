"""`wschat-cli URL --room R [--name N]`: a line chat in the terminal, on Autobahn's client.

Type a line to say it in the current room (the one joined last); commands start with `/`:
/join ROOM, /leave [ROOM], /who [ROOM], /history [N], /search WORDS, /more, /kick NAME
(admins), /help, /quit. /history shows the N (default 50) messages before the oldest shown;
/search lists the room's messages holding every word, newest first, with their ids and times,
and /more the next page of them. The client reconnects with backoff, rejoins its rooms with
`since` (so it shows what it missed, once), and resends what it said while offline (with the
same `ref`, so nothing is stored twice).

--json is for scripts: every line on stdin is sent as a frame, every frame received is written
to stdout as one JSON line, and the client exits when the connection ends, or once stdin is
closed and what was sent has been answered.

The token of a signed identity is read from --token-file, never from the command line (argv is
visible to every user of the machine), and read again before it expires and on a reconnect, so
a job that rewrites the file keeps the client signed in.
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO

from wschat.cli.client import Cli, Stdin
from wschat.cli.state import ws_url


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="wschat-cli",
        # No --token abbreviating --token-file: a token on the command line is what to avoid.
        allow_abbrev=False,
        description="A line chat in the terminal for a wschat server.",
        epilog=(
            "Commands: /join ROOM, /leave [ROOM], /who [ROOM], /history [N] (the N, default "
            "50, messages before the oldest shown), /search WORDS (the room's messages with "
            "all these words, newest first), /more (the next page of that search), /kick NAME, "
            "/help, /quit."
        ),
    )
    parser.add_argument("url", help="ws://host:port/ws, wss://…, or http(s)://host:port")
    parser.add_argument(
        "--room", action="append", help="room to join (repeatable; the last is current)"
    )
    parser.add_argument("--name", help="your name (a signed token names you instead)")
    parser.add_argument("--token-file", help="file holding your JWT; read again before it expires")
    parser.add_argument(
        "--ca", help="PEM certificate(s) to trust for wss:// instead of the system's"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="wss:// without verifying the certificate"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="frames as JSON lines: stdin is sent, what arrives is printed; exit when closed",
    )
    args = parser.parse_args(argv)
    if not args.json and not args.room:
        parser.error("--room is required (except with --json)")
    if not args.json and args.name is None and args.token_file is None:
        parser.error("--name is required without --token-file")
    if args.ca and args.insecure:
        parser.error("--ca and --insecure contradict each other")
    try:
        ws_url(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    async def run(reactor: Any) -> None:
        holder = Protocol()
        cli = Cli(reactor, args, holder)
        stdin = Stdin(cli)
        stdio = StandardIO(stdin, reactor=reactor)
        holder.transport = stdio
        code = await cli.start()
        # Let what is written reach the terminal before the reactor stops.
        stdio.loseConnection()
        await stdin.lost
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
