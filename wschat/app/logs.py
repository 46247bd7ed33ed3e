"""`--log-format json`, and `--max-log-files` for either format: the log written where twistd
would write it, rotated as twistd rotates it, with at most that many rotated files kept.

twistd chooses its log observer after makeService: from `--logger`, else from an ILogObserver
component of the application (a .tac file's way), else from `--logfile`/`--nodaemon`. A plugin
has no `--logger` of its own, so the top service sets the component (lifecycle.WschatService),
with an observer that writes to the destination twistd would have used, rotated as twistd
rotates it (at 1 MB and on SIGUSR1), but keeping no more than --max-log-files old files:
twistd's own LogFile keeps them all.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import (
    ILogObserver,
    LogEvent,
    eventAsText,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.logfile import LogFile
from zope.interface import provider

LOG_FORMATS = ("text", "json")
# Rotated files kept (wschat.log.1 to .10): 10 MB of history at twistd's 1 MB rotation.
DEFAULT_MAX_LOG_FILES = 10


def log_format(value: str) -> str:
    if value not in LOG_FORMATS:
        raise ValueError(f"{value} is not one of {', '.join(LOG_FORMATS)}")
    return value


def json_lines_observer(out: IO[Any]) -> ILogObserver:
    """One JSON object per line (no RFC 7464 separator: journald, Loki and jq read lines):
    twistd's event fields, plus `log_text`, the line the text format would have written."""
    records = jsonFileLogObserver(out, recordSeparator="")

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        # A copy: every other observer sees the same event dict.
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        records({**event, "log_text": text})

    return observe


def check_twistd_options(log_format: str, twistd: Mapping[str, Any]) -> None:
    """Refuse what --log-format json cannot honour, at start-up (`twistd` is twistd's own
    options, the parent of wschat's)."""
    if log_format != "json":
        return
    if twistd.get("logger") is not None:
        raise usage.UsageError("--log-format json and twistd's --logger both choose the log")
    if twistd.get("syslog"):
        raise usage.UsageError("--log-format json writes to a file or stdout, not to --syslog")
    if twistd.get("logfile") == "-" and not twistd.get("nodaemon"):
        raise usage.UsageError("Daemons cannot log to stdout (--logfile - needs --nodaemon)")


def twistd_log_file(
    twistd: Mapping[str, Any], reactor: IReactorFromThreads, max_files: int = DEFAULT_MAX_LOG_FILES
) -> IO[Any]:
    """Where twistd's own observer would write (its UnixAppLogger's rules), with its rotation:
    the file rotates itself at 1 MB and, on SIGUSR1, at once; `max_files` rotated files are
    kept, the older ones deleted."""
    logfile = twistd.get("logfile") or ""
    if logfile == "-" or (twistd.get("nodaemon") and not logfile):
        return sys.stdout
    log_file = LogFile.fromFullPath(logfile or "twistd.log", maxRotatedFiles=max_files)
    if not signal.getsignal(signal.SIGUSR1):  # as twistd: unless someone has claimed it

        def rotate(signum: int, frame: object) -> None:
            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return log_file


def observer_for(
    log_format: str,
    twistd: Mapping[str, Any] | None,
    reactor: IReactorFromThreads,
    max_files: int = DEFAULT_MAX_LOG_FILES,
) -> ILogObserver | None:
    """The observer for --log-format; None leaves twistd's own in place: for text on stdout,
    syslog or twistd's --logger, where no file of ours rotates."""
    if twistd is None:
        return None
    if log_format == "text":
        if twistd.get("syslog") or twistd.get("logger") is not None:
            return None
        out = twistd_log_file(twistd, reactor, max_files)
        return None if out is sys.stdout else textFileLogObserver(out)
    return json_lines_observer(twistd_log_file(twistd, reactor, max_files))
