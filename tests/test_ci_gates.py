"""CI runs what the README says, and a test whose prerequisite is missing fails there instead of skipping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import need

ROOT = Path(__file__).resolve().parents[1]


def test_a_missing_prerequisite_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        need(tmp_path / "absent")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not present"):
        need(tmp_path / "absent")
    assert need(tmp_path) == tmp_path


def test_ci_runs_the_readme_test_command_with_ci_set():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^\(command -v redis-server.*$", readme, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert command and command[0] in ci.splitlines()
    assert "command -v npm" in command[0] and 'export CI="${CI:-1}"' in ci
