"""The wschat benchmark: wschat and its peers through the same scenarios (see README.md)."""
