"""Shared fixtures: an isolated artifact cache and results directory per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # One artifact cache for the whole session: exports are the slow part of the tests.
    if "CONVBENCH_CACHE" not in os.environ:
        cache = Path(os.environ.get("CONVBENCH_TEST_CACHE", ROOT / ".cache" / "test-artifacts"))
        os.environ["CONVBENCH_CACHE"] = str(cache)


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "results"
    monkeypatch.setenv("CONVBENCH_RESULTS", str(path))
    return path


def require(condition: bool, reason: str) -> None:
    """Skip locally when a test's real component is missing; fail in CI, never skip there."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)
