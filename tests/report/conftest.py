"""The default `agentkv report`, run once for every test of its content (it is the run a new user sees)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(slots=True)
class ReportRun:
    stdout: str
    doc: dict
    html: Path


def run_report(out: Path, *args: str) -> ReportRun:
    """`agentkv report ARGS --out OUT` in a subprocess, as a user runs it."""
    r = subprocess.run([sys.executable, "-m", "agentkv.cli", "report", *args, "--out", str(out)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return ReportRun(r.stdout, json.loads(out.with_suffix(".json").read_text()), out)


@pytest.fixture(scope="session")
def default_report(tmp_path_factory) -> ReportRun:
    return run_report(tmp_path_factory.mktemp("default_report") / "report.html")
