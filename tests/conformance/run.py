#!/usr/bin/env python3
"""Run the Autobahn|Testsuite (``wstest -m fuzzingclient``) against the real ``twistd -n wschat``.

Starts ``twistd -n wschat`` on a free 127.0.0.1 port with the test-only ``--conformance-echo``
option (a plain echo WebSocket at ``/echo`` that uses the same Autobahn protocol options as
``/ws``), runs the fuzzing client against ``ws://127.0.0.1:PORT/echo``, keeps the suite's report in
the output directory, judges every case and prints a markdown summary (also written to
``<out>/summary.md``).

Exit status: 0 when every case passes, 1 when a case fails (or is missing), 2 when the run itself
could not be done (no wstest, the server did not start, wstest timed out, no report).

A case passes when ``behavior`` is OK or INFORMATIONAL, or NON-STRICT for one of the cases in
``FLAKY_NON_STRICT`` (there the server fails the connection before echoing, which the suite labels
NON-STRICT in some runs and OK in others), and ``behaviorClose`` is OK or INFORMATIONAL.
FAILED, UNIMPLEMENTED, WRONG CODE and UNCLEAN fail.

Usage: run.py [--twistd PATH] [--wstest PATH] [--out DIR] [--cases 1.* ...] [--server-arg ARG ...]
Environment defaults: WSCHAT_TWISTD (<repo>/.venv/bin/twistd), WSTEST_VENV (<repo>/.venv-wstest),
CONFORMANCE_OUT (<repo>/tests/artifacts/conformance).
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Sections 1-7 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, closing),
#: 9 (limits/performance) and 10 (misc). 12/13 are permessage-deflate, which wschat does not offer.
DEFAULT_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
EXCLUDE_CASES = ["12.*", "13.*"]

#: Cases whose NON-STRICT result comes and goes between runs: each sends a valid message followed by
#: an invalid frame, and the server may fail the connection before it echoes the valid one. These
#: are exactly the cases of sections 1-10 whose own expectation lists NON-STRICT with no echo as an
#: accepted outcome (the suite labels it a pass). The issue named all but 3.4; 3.4 (the same test
#: as 3.2/3.3 with RSV=4, sent octet-wise) came out NON-STRICT against a plain Autobahn echo
#: server as well. NON-STRICT counts as a pass only for these.
FLAKY_NON_STRICT = frozenset(
    ["3.2", "3.3", "3.4", "4.1.3", "4.1.4", "4.1.5", "4.2.3", "4.2.4", "4.2.5", "5.15"]
)

PASS_BEHAVIOR = frozenset(["OK", "INFORMATIONAL"])
PASS_CLOSE = frozenset(["OK", "INFORMATIONAL"])

#: Large enough for section 9's 16 MiB messages.
MAX_MESSAGE_BYTES = 20_000_000


def log(msg: str) -> None:
    print(f"conformance: {msg}", file=sys.stderr, flush=True)


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in case_id.split("."))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Judging the report (pure functions; unit-tested in test_conformance.py)


def judge_case(case_id: str, result: dict) -> str | None:
    """Return None when the case passes, else a short reason."""
    behavior = result.get("behavior")
    close = result.get("behaviorClose")
    reasons = []
    if behavior in PASS_BEHAVIOR:
        pass
    elif behavior == "NON-STRICT" and case_id in FLAKY_NON_STRICT:
        pass
    else:
        reasons.append(f"behavior {behavior}")
    if close not in PASS_CLOSE:
        reasons.append(f"behaviorClose {close}")
    if not reasons:
        return None
    return ", ".join(reasons) + f" (remote close code {result.get('remoteCloseCode')})"


def judge(results: dict[str, dict], expected: list[str] | None) -> dict[str, str]:
    """Map each failing (or missing) case id to its reason."""
    failures = {}
    for case_id in sorted(results, key=case_key):
        reason = judge_case(case_id, results[case_id])
        if reason:
            failures[case_id] = reason
    for case_id in expected or []:
        if case_id not in results:
            failures[case_id] = "missing from the report (not run)"
    return dict(sorted(failures.items(), key=lambda kv: case_key(kv[0])))


def summarize(results: dict[str, dict], failures: dict[str, str], agent: str, meta: str) -> str:
    """A markdown summary: counts by behavior per section, close behaviors, failures."""
    behaviors = [
        "OK",
        "NON-STRICT",
        "INFORMATIONAL",
        "FAILED",
        "WRONG CODE",
        "UNCLEAN",
        "UNIMPLEMENTED",
    ]
    seen = {r.get("behavior") for r in results.values()}
    extra = sorted(b for b in seen if isinstance(b, str) and b not in behaviors)
    behaviors += extra
    by_section: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for case_id, r in results.items():
        by_section[case_key(case_id)[0]][r.get("behavior")] += 1
    totals = collections.Counter(r.get("behavior") for r in results.values())
    used = [b for b in behaviors if totals[b]] or ["OK"]

    lines = [f"Agent `{agent}`; {meta}", ""]
    lines.append("| section | cases | " + " | ".join(used) + " | failed |")
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in used) + " | ---: |")
    for sec in sorted(by_section):
        n = sum(by_section[sec].values())
        nfail = sum(1 for c in failures if case_key(c)[0] == sec)
        lines.append(
            f"| {sec} | {n} | "
            + " | ".join(str(by_section[sec][b]) for b in used)
            + f" | {nfail} |"
        )
    lines.append(
        f"| **all** | **{len(results)}** | "
        + " | ".join(f"**{totals[b]}**" for b in used)
        + f" | **{len(failures)}** |"
    )
    lines.append("")
    closes = collections.Counter(r.get("behaviorClose") for r in results.values())
    lines.append(
        "Close behavior: " + ", ".join(f"{k} {v}" for k, v in sorted(closes.items(), key=str)) + "."
    )
    nonstrict = sorted(
        (c for c, r in results.items() if r.get("behavior") == "NON-STRICT"), key=case_key
    )
    if nonstrict:
        lines.append("NON-STRICT: " + ", ".join(nonstrict) + ".")
    lines.append("")
    if failures:
        lines.append(f"**{len(failures)} case(s) failed:**")
        lines.append("")
        lines.append("| case | reason |")
        lines.append("| --- | --- |")
        for c, why in failures.items():
            lines.append(f"| {c} | {why} |")
    else:
        lines.append(f"**All {len(results)} cases passed.**")
    return "\n".join(lines) + "\n"


def case_detail(reports: Path, result: dict) -> str:
    """The suite's own one-line verdict on a case (from its per-case JSON report), if any."""
    try:
        report = json.loads((reports / result["reportfile"]).read_text())
    except (KeyError, OSError, ValueError):
        return ""
    parts = [str(report.get(k) or "").strip() for k in ("result", "resultClose")]
    text = "; ".join(p for p in parts if p).replace("|", "/")
    return (text[:200] + "...") if len(text) > 200 else text


def expected_cases(wstest_log: str) -> list[str] | None:
    """The case ids wstest said it would run (its 'Cases = [...]' line), or None."""
    m = re.search(r"^Cases = (\[.*\])\s*$", wstest_log, re.M)
    if not m:
        return None
    try:
        return sorted((str(c) for c in ast.literal_eval(m.group(1))), key=case_key)
    except (ValueError, SyntaxError):
        return None


# --------------------------------------------------------------------------------------------
# Running


def wait_ready(proc: subprocess.Popen, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            time.sleep(0.1)
            continue
        # The port is open; /healthz answering means the web resource tree is up too.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return True
        except Exception:
            return True  # even a 404 (no /healthz) means it is serving
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log(f"twistd (pid {proc.pid}) did not stop on SIGTERM; killing it")
        proc.kill()
        proc.wait(timeout=5)


def start_server(
    twistd: str, port: int, workdir: Path, server_args: list[str], logfile: Path
) -> subprocess.Popen:
    cmd = [
        twistd,
        "-n",
        "--pidfile=",
        "wschat",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--conformance-echo",
        "--max-message-bytes",
        str(MAX_MESSAGE_BYTES),
        "--history-db",
        ":memory:",
        *server_args,
    ]
    log("starting: " + " ".join(cmd))
    with open(logfile, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def run_wstest(wstest: str, spec_path: Path, out: Path, timeout: float) -> int | None:
    """Run the fuzzing client; its exit status, or None when it was killed after `timeout`."""
    with open(out / "wstest.log", "wb") as wlog:
        wst = subprocess.Popen(
            [wstest, "-m", "fuzzingclient", "-s", str(spec_path)],
            cwd=out,
            stdout=wlog,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        return wst.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:  # also when interrupted (test timeout, SIGTERM): leave no wstest behind
        if wst.poll() is None:
            os.killpg(wst.pid, signal.SIGKILL)
            wst.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--twistd", default=os.environ.get("WSCHAT_TWISTD", str(REPO / ".venv/bin/twistd"))
    )
    venv = Path(os.environ.get("WSTEST_VENV", str(REPO / ".venv-wstest")))
    ap.add_argument("--wstest", default=str(venv / "bin/wstest"))
    ap.add_argument(
        "--out",
        default=os.environ.get("CONFORMANCE_OUT", str(REPO / "tests/artifacts/conformance")),
    )
    ap.add_argument(
        "--cases", nargs="+", default=DEFAULT_CASES, help="case patterns (default: %(default)s)"
    )
    ap.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for 'twistd wschat' (repeatable)",
    )
    ap.add_argument("--url", help="test this running server instead of starting twistd")
    ap.add_argument("--timeout", type=float, default=600, help="wstest time limit, seconds")
    args = ap.parse_args(argv)

    wstest = args.wstest
    if not (os.path.isfile(wstest) and os.access(wstest, os.X_OK)):
        log(f"wstest not found at {wstest}; run tests/conformance/setup.sh first")
        return 2
    if not args.url and not (shutil.which(args.twistd) or os.access(args.twistd, os.X_OK)):
        log(f"twistd not found at {args.twistd} (pass --twistd or set WSCHAT_TWISTD)")
        return 2

    out = Path(args.out).resolve()
    reports = out / "reports"
    if reports.exists():
        shutil.rmtree(reports)
    work = out / "server"
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.md", "wstest.log", "twistd.log", "spec.json"):
        (out / stale).unlink(missing_ok=True)

    agent = "wschat"
    proc = None
    started = time.monotonic()
    try:
        if args.url:
            url = args.url
        else:
            for attempt in range(2):
                port = free_port()
                proc = start_server(args.twistd, port, work, args.server_arg, out / "twistd.log")
                if wait_ready(proc, port, timeout=20):
                    break
                stop(proc)
                log(f"twistd did not come up on port {port} (attempt {attempt + 1})")
                proc = None
            if proc is None:
                log(
                    "twistd never started; its output:\n"
                    + (out / "twistd.log").read_text(errors="replace")[-4000:]
                )
                return 2
            url = f"ws://127.0.0.1:{port}/echo"

        spec = {
            "outdir": str(reports),
            "servers": [{"agent": agent, "url": url}],
            "cases": args.cases,
            "exclude-cases": EXCLUDE_CASES,
            "exclude-agent-cases": {},
        }
        spec_path = out / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=2) + "\n")
        log(f"running wstest -m fuzzingclient against {url} (cases {' '.join(args.cases)})")
        rc = run_wstest(wstest, spec_path, out, args.timeout)
        if rc is None:
            log(f"wstest did not finish in {args.timeout:.0f} s; see {out / 'wstest.log'}")
            return 2
        if rc != 0:
            log(f"wstest exited with {rc}; see {out / 'wstest.log'}")
    finally:
        if proc is not None:
            stop(proc)
            # twistd re-raises the SIGTERM it was stopped with, so -SIGTERM is a clean stop.
            if proc.returncode not in (0, -signal.SIGTERM, None):
                log(f"twistd exited with {proc.returncode}; see {out / 'twistd.log'}")
    elapsed = time.monotonic() - started

    index = reports / "index.json"
    if not index.exists():
        log(f"no report at {index}; see {out / 'wstest.log'}")
        return 2
    results = json.loads(index.read_text()).get(agent, {})
    expected = expected_cases((out / "wstest.log").read_text(errors="replace"))
    failures = judge(results, expected)
    for case_id in failures:
        detail = case_detail(reports, results.get(case_id, {}))
        if detail:
            failures[case_id] += f": {detail}"
    meta = (
        f"autobahntestsuite 25.10.1 `fuzzingclient`, cases {', '.join(args.cases)} "
        f"against `{args.url or 'ws://127.0.0.1:PORT/echo'}`; {elapsed:.0f} s."
    )
    summary = summarize(results, failures, agent, meta)
    (out / "summary.md").write_text(summary)
    print(summary)
    log(f"report: {reports / 'index.html'}; summary: {out / 'summary.md'}")
    if not results or rc != 0:
        log("the report has no results" if not results else "wstest did not exit cleanly")
        return 2
    return 1 if failures else 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs the finally blocks that stop twistd and wstest


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
