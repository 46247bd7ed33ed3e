"""What the results record about the machine and the software: CPU, memory, fd limit, the
versions of every server and tool, and which servers this machine can run."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
from typing import Any

from .settings import BENCH, ROOT


def versions(opts: argparse.Namespace) -> dict[str, Any]:
    v: dict[str, Any] = {
        "python (orchestrator)": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        v["node"] = subprocess.run(
            [opts.node, "--version"], capture_output=True, text=True
        ).stdout.strip()
        with open(os.path.join(BENCH, "node_modules", "ws", "package.json")) as f:
            v["ws (npm)"] = json.load(f)["version"]
    except OSError:
        pass
    probe = (
        "import sys, importlib.metadata as m\n"
        "out = {'python (servers)': sys.version.split()[0]}\n"
        "for p in ('twisted', 'autobahn', 'websockets', 'wschat'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except Exception: pass\n"
        "import json; print(json.dumps(out))\n"
    )
    try:
        r = subprocess.run([opts.python, "-c", probe], capture_output=True, text=True, timeout=30)
        v.update(json.loads(r.stdout))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    try:
        r = subprocess.run(
            [
                opts.python,
                "-c",
                "import autobahn.websocket as w; print(getattr(w, 'USES_NVX', None))",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        v["autobahn USES_NVX"] = r.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        # Without its C write loop (no compiler at install), wschat runs the Python one.
        built = subprocess.run(
            [opts.python, "-c", "import wschat.server._sendmany"], capture_output=True, timeout=30
        )
        v["wschat C write loop (wschat.server._sendmany)"] = (
            "built" if built.returncode == 0 else "missing"
        )
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        rev = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        if rev:
            v["wschat git"] = rev
    except OSError:
        pass
    return v


def machine() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": mem,
        "fd limit (soft/hard)": "/".join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE))),
    }


def check_python(py: str, modules: list[str]) -> bool:
    """Whether `py` can import every module (the peers' dependencies)."""
    try:
        r = subprocess.run(
            [py, "-c", "import " + ", ".join(modules)], capture_output=True, timeout=60
        )
        return r.returncode == 0
    except OSError:
        return False


def wschat_extra_args(twistd: str) -> list[str] | None:
    """Options wschat needs lifted for the benchmark, if this version of it has them."""
    try:
        r = subprocess.run([twistd, "wschat", "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    # --max-members and --max-connections default to no limit. A version that drains on stop
    # is told to stop at once (stop_process waits 3 s), so that versions from before the drain
    # and after it are measured alike.
    return ["--drain-seconds", "0"] if "--drain-seconds" in r.stdout else []


def redis_version(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
