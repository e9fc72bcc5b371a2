"""The suite-wide rule of tests/conftest.py, checked on a throwaway suite run by a real pytest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

SUITE = '''
import pytest

def test_needs_a_tool():
    pytest.skip("no such tool")

@pytest.mark.xfail(reason="known", strict=True)
def test_known_failure():
    assert False
'''


@pytest.mark.parametrize(("env", "skip_outcome"), [
    ({"KAPA_REQUIRE_TOOLS": "1"}, "FAILED test_suite.py::test_needs_a_tool"),
    ({"CI": "true"}, "FAILED test_suite.py::test_needs_a_tool"),
    ({}, "SKIPPED [1] test_suite.py:5: no such tool"),
])
def test_a_skip_fails_where_every_tool_must_be_present(tmp_path: Path, env: dict[str, str], skip_outcome: str) -> None:
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_suite.py").write_text(SUITE)
    clean = {key: value for key, value in os.environ.items() if key not in ("CI", "KAPA_REQUIRE_TOOLS")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                            capture_output=True, text=True, env={**clean, **env}, cwd=tmp_path, timeout=60)
    assert skip_outcome in result.stdout, result.stdout
    assert "XFAIL test_suite.py::test_known_failure" in result.stdout, result.stdout
