"""twistd plugin: `twistd wschat`. wschat.tap is imported only when twistd runs it."""

from twisted.application.service import ServiceMaker

wschat = ServiceMaker(
    "wschat",
    "wschat.tap",
    "A real-time WebSocket chat server (browser client at /, WebSocket at /ws).",
    "wschat",
)
