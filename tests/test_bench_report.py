"""bench/: docs/benchmarks.md is what the saved results render to, and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.docs import load_results, render_docs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "bench/results/latest-full.jsonl"
PAGE = ROOT / "docs" / "benchmarks.md"


def test_committed_page_is_the_render_of_its_results() -> None:
    """The committed page is, byte for byte, what its raw results render to."""
    meta, records = load_results(str(ROOT / RESULTS))
    assert render_docs(meta, records, RESULTS) == PAGE.read_text("utf-8")


def test_page_names_the_commit_its_results_record() -> None:
    """The page names the wschat commit that the results' settings line records."""
    meta, _ = load_results(str(ROOT / RESULTS))
    assert f"- wschat git: {meta['versions']['wschat git']}\n" in PAGE.read_text("utf-8")


def test_report_subcommand_of_run_py_writes_the_page(tmp_path: Path) -> None:
    """`bench/run.py report` (the script the Makefile runs) writes the committed page."""
    out = tmp_path / "benchmarks.md"
    subprocess.run(
        [sys.executable, "bench/run.py", "report", "--results", RESULTS, "--docs", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert out.read_text("utf-8") == PAGE.read_text("utf-8")
