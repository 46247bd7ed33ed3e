"""bench/: docs/benchmarks.md is what the saved results render to, and after its mark the
sections of the benchmarks run by hand (bench/browser_flood.py), kept as they are."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.docs import KEPT_MARK, kept_sections, load_results, render_docs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "bench/results/latest-full.jsonl"
PAGE = ROOT / "docs" / "benchmarks.md"


def test_committed_page_is_the_render_of_its_results() -> None:
    """The committed page is, byte for byte, what its raw results render to, then its kept
    sections."""
    meta, records = load_results(str(ROOT / RESULTS))
    page = PAGE.read_text("utf-8")
    assert render_docs(meta, records, RESULTS) + kept_sections(str(PAGE)) == page


def test_page_names_the_commit_its_results_record() -> None:
    """The page names the wschat commit that the results' settings line records."""
    meta, _ = load_results(str(ROOT / RESULTS))
    assert f"- wschat git: {meta['versions']['wschat git']}\n" in PAGE.read_text("utf-8")


def test_report_subcommand_of_run_py_writes_the_page(tmp_path: Path) -> None:
    """`bench/run.py report` (the script the Makefile runs) writes the committed page again,
    its kept sections included."""
    out = tmp_path / "benchmarks.md"
    out.write_text(PAGE.read_text("utf-8"), "utf-8")
    subprocess.run(
        [sys.executable, "bench/run.py", "report", "--results", RESULTS, "--docs", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert out.read_text("utf-8") == PAGE.read_text("utf-8")


def test_a_rewrite_keeps_what_follows_the_mark_and_drops_the_rest(tmp_path: Path) -> None:
    """Writing the page over an older one keeps its sections after KEPT_MARK, nothing before."""
    out = tmp_path / "benchmarks.md"
    out.write_text(f"# an older run\n\n{KEPT_MARK}\n\n## By hand\n\nfigures\n", "utf-8")
    subprocess.run(
        [sys.executable, "bench/run.py", "report", "--results", RESULTS, "--docs", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    meta, records = load_results(str(ROOT / RESULTS))
    page = out.read_text("utf-8")
    assert page == render_docs(meta, records, RESULTS) + f"\n{KEPT_MARK}\n\n## By hand\n\nfigures\n"
    assert "an older run" not in page
