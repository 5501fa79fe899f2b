"""The whole tree is lint-clean, formatted and type-checked (ruff and mypy, configured in pyproject.toml): CI
fails on any of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_finds_nothing_to_fix():
    result = _ruff("check", "--no-cache", ".")
    assert result.returncode == 0, f"`ruff check .` reports:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"


def test_ruff_format_leaves_every_file_as_it_is():
    result = _ruff("format", "--check", "--no-cache", ".")
    assert result.returncode == 0, f"`ruff format .` would change:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"


def test_mypy_finds_no_type_error():
    """mypy over src, tests and benchmarks (``[tool.mypy]`` in pyproject.toml)."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, f"mypy reports:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
