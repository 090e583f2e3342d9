"""`.ci/run` fails when the README's test command fails, including pytest's exit 5."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci" / "run"

# What GNU make prints and returns when `make test` runs pytest and pytest exits with
# the given code (make turns every failing recipe into its own exit status 2).
MAKE_OUTPUT = {
    0: ("320 passed, 3 deselected in 171.65s", 0),
    1: ("1 failed, 319 passed in 170.00s\nmake: *** [Makefile:20: test] Error 1", 2),
    5: ("323 deselected in 1.93s\nmake: *** [Makefile:20: test] Error 5", 2),
}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("pytest_code", "ci_code"), [(0, 0), (1, 2), (5, 1)])
def test_ci_exit_code_follows_the_test_run_and_no_test_collected_fails(
    tmp_path, pytest_code, ci_code
):
    text, make_code = MAKE_OUTPUT[pytest_code]
    fake = tmp_path / "bin" / "make"
    fake.parent.mkdir()
    fake.write_text(f"#!/usr/bin/env bash\ncat <<'EOF'\n{text}\nEOF\nexit {make_code}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(CI)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == ci_code, run.stdout + run.stderr
    assert text.splitlines()[0] in run.stdout  # the test output is shown, not swallowed
    assert ("collected no tests" in run.stderr) == (pytest_code == 5)
