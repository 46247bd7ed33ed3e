"""Log namespaces stay what operators filter on, wherever the code that logs lives."""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import Logger, LogLevel

from wschat.logger import NamedLogger


class Speaker:
    _log = NamedLogger("wschat.old.Speaker")

    def speak(self) -> None:
        self._log.info("hello")


class Subclass(Speaker):
    pass


def test_a_named_logger_keeps_its_namespace_in_subclasses(
    log_events: EventLoggingObserver,
) -> None:
    """Events of an instance, of a subclass too, carry the fixed namespace and the instance."""
    speaker = Subclass()
    speaker.speak()
    mine = [e for e in log_events if e.get("log_format") == "hello"]
    assert [(e["log_namespace"], e["log_source"], e["log_level"]) for e in mine] == [
        ("wschat.old.Speaker", speaker, LogLevel.info)
    ]


def test_twisteds_logger_would_rename_itself() -> None:
    """Why NamedLogger exists: a plain Logger takes the reading class's module and name."""

    class Moved:
        _log = Logger(namespace="wschat.old.Moved")

    assert Moved()._log.namespace.endswith("test_logger.Moved")
