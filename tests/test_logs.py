"""--log-format: the JSON lines observer, where it writes, and how twistd is told about it."""

from __future__ import annotations

import io
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Application, IServiceCollection
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import ILogObserver, Logger, LogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

from wschat.app.lifecycle import WschatService
from wschat.app.logs import check_twistd_options, json_lines_observer, observer_for, twistd_log_file
from wschat.app.options import Options


@implementer(IReactorFromThreads)
class NoThreads:
    def callFromThread(self, callable: Callable[..., Any], *args: object, **kwargs: object) -> None:
        raise AssertionError("no signal expected")


@pytest.fixture
def sigusr1() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_json_lines_have_the_fields_and_the_text() -> None:
    """Each event is one JSON line: fields, level, namespace and text, tracebacks too."""
    out = io.StringIO()
    publisher = LogPublisher(json_lines_observer(out))
    log = Logger(namespace="wschat.test", observer=publisher)
    log.info("closed {client} after {duration:.1f}s", client="tcp4:1.2.3.4:5", duration=2.25)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("request from {client} failed", Failure(), client="x")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["log_text"] == "closed tcp4:1.2.3.4:5 after 2.2s"
    assert (first["client"], first["duration"]) == ("tcp4:1.2.3.4:5", 2.25)
    assert (first["log_level"]["name"], first["log_namespace"]) == ("info", "wschat.test")
    assert second["log_level"]["name"] == "critical"
    assert "ZeroDivisionError" in second["log_text"] and "Traceback" in second["log_text"]


def test_the_destination_is_the_one_twistd_would_use(tmp_path: Path, sigusr1: None) -> None:
    """JSON goes where twistd's text would: stdout in the foreground, else a rotating file."""
    reactor = NoThreads()
    assert twistd_log_file({"nodaemon": True, "logfile": None}, reactor) is sys.stdout
    assert twistd_log_file({"nodaemon": True, "logfile": "-"}, reactor) is sys.stdout
    log_file = twistd_log_file({"nodaemon": False, "logfile": str(tmp_path / "w.log")}, reactor)
    assert isinstance(log_file, LogFile) and log_file.path == str(tmp_path / "w.log")
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
    log_file.close()


def test_rotated_files_are_bounded(tmp_path: Path, sigusr1: None) -> None:
    """With --max-log-files 2 only name.1 and name.2 are kept however often the log rotates;
    text goes to such a file too, unless twistd's syslog or --logger takes the log."""
    log_file = twistd_log_file({"logfile": str(tmp_path / "w.log")}, NoThreads(), 2)
    assert isinstance(log_file, LogFile)
    for _ in range(4):
        log_file.write("a line\n")
        log_file.rotate()
    log_file.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.log", "w.log.1", "w.log.2"]
    file_opts = {"logfile": str(tmp_path / "t.log")}
    assert observer_for("text", file_opts, NoThreads(), 2) is not None
    assert observer_for("text", {**file_opts, "syslog": True}, NoThreads()) is None
    assert observer_for("text", {**file_opts, "logger": object()}, NoThreads()) is None


@pytest.mark.parametrize(
    ("twistd", "problem"),
    [
        ({"syslog": True}, "not to --syslog"),
        ({"logger": object()}, "--logger both choose"),
        ({"logfile": "-", "nodaemon": False}, "Daemons cannot log to stdout"),
    ],
)
def test_json_refuses_what_it_cannot_honour(twistd: dict[str, object], problem: str) -> None:
    """--log-format json with syslog, twistd's --logger, or a daemon on stdout stops start-up."""
    with pytest.raises(usage.UsageError, match=problem):
        check_twistd_options("json", twistd)
    check_twistd_options("text", twistd)  # twistd's own text logging handles all of these


def test_log_format_is_text_or_json() -> None:
    """--log-format defaults to text (twistd's own observer stays) and takes only text/json."""
    options = Options()
    options.parseOptions([])
    assert options["log-format"] == "text"
    assert observer_for("text", {"nodaemon": True}, NoThreads()) is None
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--log-format", "xml"])


def test_the_observer_reaches_twistd_through_the_application() -> None:
    """The top service sets its observer as the ILogObserver of twistd's application."""
    observer = json_lines_observer(io.StringIO())
    application = Application("wschat")
    WschatService(lambda: succeed(None), observer).setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer
    assert len(list(IServiceCollection(application))) == 1
    plain = Application("wschat")
    WschatService(lambda: succeed(None)).setServiceParent(plain)
    assert plain.getComponent(ILogObserver) is None
