"""Loggers whose namespace is fixed by name, not by where the code lives.

Operators filter JSON logs on `log_namespace` (docs/deployment.md), so a class that moves to
another module keeps logging under its old namespace. Twisted's Logger, used as a class
attribute, renames itself after the class of each instance that reads it; this one does not.
"""

from __future__ import annotations

from twisted.logger import Logger


class NamedLogger(Logger):
    """A Logger that keeps its namespace when read through a class or an instance."""

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        return Logger(self.namespace, instance if instance is not None else owner, self.observer)
