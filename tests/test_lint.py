"""The code's own checks, run with the tests: ruff (pyflakes, pycodestyle and a complexity gate of
12, configured in pyproject.toml) and mypy. A function that grows past the gate is split."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean_with_the_complexity_gate():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "conductor", "cli", "tests", "bench"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean():
    done = subprocess.run([sys.executable, "-m", "mypy", "conductor", "cli"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
