"""The Autobahn|Testsuite against the real `twistd -n wschat` (see docs/conformance.md).

The suite itself needs the Python 2.7 virtualenv made by tests/conformance/setup.sh. Without it
the run is skipped on a developer's machine and fails in CI (CI=true), where it must run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ..missing import missing
from . import run

TWISTD = os.environ.get("WSCHAT_TWISTD", str(Path(sys.executable).with_name("twistd")))
WSTEST_VENV = Path(os.environ.get("WSTEST_VENV", str(run.REPO / ".venv-wstest")))
WSTEST = WSTEST_VENV / "bin" / "wstest"
OUT = Path(os.environ.get("CONFORMANCE_OUT", str(run.REPO / "tests/artifacts/conformance")))
WSTEST_TIMEOUT_S = 180


def _require_wstest() -> None:
    if WSTEST.exists():
        return
    missing(
        f"the Autobahn|Testsuite is not installed ({WSTEST} is missing); "
        "run tests/conformance/setup.sh (needs pyenv's Python 2.7.18)"
    )


@pytest.mark.e2e
@pytest.mark.timeout(WSTEST_TIMEOUT_S + 90)
def test_autobahn_testsuite_sections_1_to_10() -> None:
    """Every case of sections 1-7, 9 and 10 passes against the real server's /echo."""
    _require_wstest()
    # In-process, so that a pytest timeout still runs run.main's cleanup (twistd, wstest).
    rc = run.main(
        [
            "--twistd",
            TWISTD,
            "--wstest",
            str(WSTEST),
            "--out",
            str(OUT),
            "--timeout",
            str(WSTEST_TIMEOUT_S),
        ]
    )
    summary = OUT / "summary.md"
    details = summary.read_text() if summary.exists() else f"(no summary; see the logs in {OUT})"
    assert rc == 0, (
        f"conformance run failed (exit {rc}); report: {OUT}/reports/index.html\n{details}"
    )


# The judging rules, without running anything.


def _case(behavior: str, close: str = "OK", code: int | None = 1000) -> dict[str, object]:
    return {"behavior": behavior, "behaviorClose": close, "remoteCloseCode": code}


@pytest.mark.parametrize("behavior", ["OK", "INFORMATIONAL"])
def test_ok_and_informational_pass(behavior: str) -> None:
    """A case whose behavior is OK or INFORMATIONAL, closed OK, passes."""
    assert run.judge_case("6.4.1", _case(behavior)) is None


def test_non_strict_passes_only_for_the_flaky_cases() -> None:
    """NON-STRICT passes only for the cases in FLAKY_NON_STRICT; elsewhere it fails, saying so."""
    assert run.judge_case("4.1.3", _case("NON-STRICT", code=None)) is None
    assert run.judge_case("5.15", _case("NON-STRICT", code=None)) is None
    reason = run.judge_case("6.4.3", _case("NON-STRICT"))
    assert reason is not None and "NON-STRICT" in reason


@pytest.mark.parametrize("behavior", ["FAILED", "WRONG CODE", "UNCLEAN", "UNIMPLEMENTED"])
def test_failing_behaviors(behavior: str) -> None:
    """FAILED, WRONG CODE, UNCLEAN and UNIMPLEMENTED fail; the reason names it and the code."""
    reason = run.judge_case("7.5.1", _case(behavior, code=1002))
    assert reason is not None and behavior in reason and "1002" in reason


@pytest.mark.parametrize("close", ["WRONG CODE", "UNCLEAN", "FAILED"])
def test_failing_close_behaviors(close: str) -> None:
    """A bad close behavior fails the case even when its behavior would pass."""
    reason = run.judge_case("3.2", _case("NON-STRICT", close=close))
    assert reason is not None and f"behaviorClose {close}" in reason


def test_a_case_missing_from_the_report_fails() -> None:
    """A case wstest said it would run that is not in the report fails as missing."""
    failures = run.judge({"1.1.1": _case("OK")}, ["1.1.1", "1.1.2"])
    assert list(failures) == ["1.1.2"]
    assert "missing" in failures["1.1.2"]


def test_expected_cases_are_read_from_wstest_output() -> None:
    """The expected cases come from wstest's 'Cases = [...]' line, in numeric order, else None."""
    log = "Ok, will run 3 test cases against 1 servers\nCases = [u'1.1.2', u'10.1.1', u'1.1.10']\n"
    assert run.expected_cases(log) == ["1.1.2", "1.1.10", "10.1.1"]
    assert run.expected_cases("no such line") is None


def test_summary_counts_by_section() -> None:
    """The summary counts behaviors per section and in all, and lists each failure's reason."""
    results = {
        "1.1.1": _case("OK"),
        "3.2": _case("NON-STRICT", code=None),
        "7.1.6": _case("INFORMATIONAL", close="INFORMATIONAL"),
        "7.5.1": _case("WRONG CODE", code=1000),
    }
    failures = run.judge(results, None)
    summary = run.summarize(results, failures, "wschat", "test")
    assert "| **all** | **4** | **1** | **1** | **1** | **1** | **1** |" in summary
    assert "| 7.5.1 | behavior WRONG CODE (remote close code 1000) |" in summary
