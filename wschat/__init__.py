"""wschat: a self-hosted real-time WebSocket chat server on Twisted and Autobahn."""

__version__ = "0.1.0"
