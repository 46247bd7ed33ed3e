"""twistd plugin: `twistd wschat`. wschat.app.options is imported only when twistd runs it."""

from twisted.application.service import ServiceMaker

wschat = ServiceMaker(
    "wschat",
    "wschat.app.options",
    "A real-time WebSocket chat server (browser client at /, WebSocket at /ws).",
    "wschat",
)
