"""The Redis engine of several nodes: the link, the broker, the roster."""
